import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { peerCredentials } from '@ambientkit/redirect'

const dir = mkdtempSync(join(tmpdir(), 'ak-peercred-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('peerCredentials (SO_PEERCRED)', () => {
  it('names the process at the other end of a unix socket: another program, its pid, uid and gid', async () => {
    const path = join(dir, 'peer.sock')
    const server = createServer()
    server.listen(path)
    await once(server, 'listening')
    const accepted = once(server, 'connection') as Promise<[Socket]>
    // A peer we did not write: Python connects and waits for us to hang up.
    const child = spawn('/usr/bin/python3', ['-c', `import socket; s = socket.socket(socket.AF_UNIX); s.connect(${JSON.stringify(path)}); s.recv(1)`], { stdio: 'ignore' })
    const [socket] = await accepted
    expect(peerCredentials(socket)).toEqual({ pid: child.pid, uid: process.getuid!(), gid: process.getgid!() })
    socket.destroy()
    await once(child, 'exit')
    server.close()
    expect(() => peerCredentials(socket)).toThrow(/no file descriptor/)
  })
})
