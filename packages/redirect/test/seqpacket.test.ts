import { spawn } from 'node:child_process'
import { closeSync, fstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, describe, expect, it } from 'vitest'
import { connectSeqpacket } from '@ambientkit/redirect'

// The peer is Python's socket module (send_fds/recv_fds), not our code.
const PEER = `
import array, os, socket, sys
path = sys.argv[1]
server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.bind(path)
server.listen(1)
print("listening", flush=True)
conn, _ = server.accept()
hello = conn.recv(1024)
print("got " + hello.hex(), flush=True)
null = os.open("/dev/null", os.O_RDONLY)
socket.send_fds(conn, [b"one fd"], [null])
socket.send_fds(conn, [b"two fds"], [null, null])
socket.send_fds(conn, [b"x" * 1025], [null])
conn.send(b"no fd")
conn.close()
`

const openFds = (): number => readdirSync('/proc/self/fd').length

describe('connectSeqpacket (AF_UNIX SOCK_SEQPACKET with descriptors, against Python)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ambientkit-seqpacket-'))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it('keeps message boundaries, receives descriptors close-on-exec, reports truncation and the end', async () => {
    const path = join(dir, 'peer.sock')
    const peer = spawn('/usr/bin/python3', ['-c', PEER, path], { stdio: ['ignore', 'pipe', 'inherit'] })
    const lines = createInterface({ input: peer.stdout! })[Symbol.asyncIterator]()
    expect((await lines.next()).value).toBe('listening')
    const before = openFds()
    const existing = new Set(readdirSync('/proc/self/fd').filter((fd) => link(fd) !== ''))
    const socket = connectSeqpacket(path)
    const added = readdirSync('/proc/self/fd').filter((fd) => !existing.has(fd) && link(fd).startsWith('socket:'))
    // Close-on-exec, so that a program the agent starts never inherits it.
    expect(added.map((fd) => cloexec(Number(fd)))).toEqual([true])
    await socket.send(Buffer.from([0x08, 0x01]))
    expect((await lines.next()).value).toBe('got 0801')
    const one = await socket.receive()
    expect(one.data.toString()).toBe('one fd')
    expect(one.fds).toHaveLength(1)
    expect(fstatSync(one.fds[0]!).rdev).toBe(statSync('/dev/null').rdev)
    expect(cloexec(one.fds[0]!)).toBe(true)
    const two = await socket.receive()
    expect([two.data.toString(), two.fds.length]).toEqual(['two fds', 2])
    const long = await socket.receive({ maxBytes: 1024 })
    expect([long.data.length, long.truncated, long.fds.length]).toEqual([1024, true, 1])
    const plain = await socket.receive()
    expect([plain.data.toString(), plain.fds]).toEqual(['no fd', []])
    const end = await socket.receive()
    expect([end.data.length, end.fds]).toEqual([0, []])
    for (const fd of [...one.fds, ...two.fds, ...long.fds]) closeSync(fd)
    await socket.close()
    await socket.close()
    expect(openFds()).toBe(before)
    await expect(socket.receive()).rejects.toMatchObject({ code: 'ERR_AMBIENT_CLOSED' })
  })

  it('refuses a path nobody listens on, naming the errno, and leaks nothing', () => {
    const before = openFds()
    expect(() => connectSeqpacket(join(dir, 'absent.sock'))).toThrow(expect.objectContaining({ code: 'ERR_AMBIENT_REDIRECT_SOCKET', details: expect.objectContaining({ errnoName: 'ENOENT' }) }))
    expect(openFds()).toBe(before)
  })

  it('a pending receive rejects when the socket is closed', async () => {
    const path = join(dir, 'silent.sock')
    const peer = spawn('/usr/bin/python3', ['-c', `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.bind(sys.argv[1]); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); c.recv(10)
`, path], { stdio: ['ignore', 'pipe', 'inherit'] })
    const lines = createInterface({ input: peer.stdout! })[Symbol.asyncIterator]()
    await lines.next()
    const socket = connectSeqpacket(path)
    const pending = socket.receive()
    await socket.close()
    await expect(pending).rejects.toMatchObject({ code: 'ERR_AMBIENT_CLOSED' })
    peer.kill()
  })
})

// The descriptor readdir itself used is gone by the time it is read.
function link(fd: string): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    return ''
  }
}

function cloexec(fd: number): boolean {
  const flags = /flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))
  return flags !== null && (parseInt(flags[1]!, 8) & 0o2000000) !== 0
}
