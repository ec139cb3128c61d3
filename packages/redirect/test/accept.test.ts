// The addon's acceptor (NetnsSockets.accept): connections leave the kernel
// as descriptors, with no net.Socket built for those a native data path carries.
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, openSync, readdirSync } from 'node:fs'
import { connect, Socket } from 'node:net'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { describe, expect, it } from 'vitest'
import type { AcceptedSocket } from '@ambientkit/core'
import { boundAddress, ownNetnsSockets } from '@ambientkit/redirect'

const sockets = ownNetnsSockets()

/** Calls back with each accepted connection; `next()` resolves with the next one. */
function accepting(listenFd: number, onPause?: (errno: string) => void) {
  const waiting: Array<(socket: AcceptedSocket) => void> = []
  const early: AcceptedSocket[] = []
  const acceptor = sockets.accept(
    listenFd,
    (socket) => {
      const resolve = waiting.shift()
      if (resolve === undefined) early.push(socket)
      else resolve(socket)
    },
    onPause,
  )
  return {
    acceptor,
    next: (): Promise<AcceptedSocket> => (early.length > 0 ? Promise.resolve(early.shift()!) : new Promise((resolve) => waiting.push(resolve))),
  }
}

describe('NetnsSockets.accept', () => {
  it('hands over descriptors from a dual-stack listener, the peer in IPv4 form, until stopped (twice is fine)', async () => {
    const listenFd = sockets.listenFd({ host: '::', port: 0, ipv6Only: false })
    const { port } = boundAddress(listenFd)
    const { acceptor, next } = accepting(listenFd)
    // A peer we did not write: Python connects, says its port, and prints what it is sent.
    const python = spawn('python3', ['-u', '-c', `import socket, sys
s = socket.create_connection(('127.0.0.1', ${port}))
print(s.getsockname()[1])
print(s.makefile().read())`])
    const [line] = (await once(python.stdout, 'data')) as [Buffer]
    const peerPort = Number(line.toString().trim())
    const accepted = await next()
    expect(accepted.remote).toEqual({ address: '127.0.0.1', port: peerPort, family: 4 })
    const socket = new Socket({ fd: accepted.fd, readable: true, writable: true })
    socket.end('from the accepted descriptor')
    let output = ''
    python.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()))
    await once(python, 'exit')
    expect(output.trim()).toBe('from the accepted descriptor')
    socket.destroy()
    acceptor.close()
    acceptor.close()
    const refused = connect(port, '127.0.0.1')
    expect(((await once(refused, 'error')) as [Error])[0]).toMatchObject({ code: 'ECONNREFUSED' })
  })

  it('keeps accepting while nothing in JavaScript holds the acceptor, as a listening server does', async () => {
    const listenFd = sockets.listenFd({ host: '127.0.0.1', port: 0 })
    const { port } = boundAddress(listenFd)
    let resolveAccepted!: (fd: number) => void
    const accepted = new Promise<number>((resolve) => (resolveAccepted = resolve))
    sockets.accept(listenFd, ({ fd }) => resolveAccepted(fd))
    setFlagsFromString('--expose-gc')
    ;(runInNewContext('gc') as () => void)()
    const client = connect(port, '127.0.0.1')
    await once(client, 'connect')
    const socket = new Socket({ fd: await accepted, readable: true, writable: true })
    socket.end('still accepting')
    const chunks: Buffer[] = []
    for await (const chunk of client) chunks.push(chunk as Buffer)
    expect(Buffer.concat(chunks).toString()).toBe('still accepting')
    socket.destroy()
  })

  it('pauses, says so, and resumes when the process runs out of descriptors, rather than spinning or dying', async () => {
    const listenFd = sockets.listenFd({ host: '127.0.0.1', port: 0 })
    const { port } = boundAddress(listenFd)
    const pauses: string[] = []
    let paused: (() => void) | undefined
    const { acceptor, next } = accepting(listenFd, (errno) => {
      pauses.push(errno)
      paused?.()
    })
    const clients: Socket[] = []
    const limit = execFileSync('prlimit', ['--pid', String(process.pid), '--nofile', '--output', 'SOFT,HARD', '--noheadings'], { encoding: 'utf8' }).trim().split(/\s+/)
    // Descriptors set aside, given back before prlimit runs again (spawning takes some).
    const reserve = Array.from({ length: 16 }, () => openSync('/dev/null', 'r'))
    try {
      // Room for a few more descriptors only: the clients' sockets take them, the next accept fails with EMFILE.
      const open = readdirSync('/proc/self/fd').length
      execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${open + 4}:${limit[1]}`])
      const pause = new Promise<void>((resolve) => (paused = resolve))
      for (let i = 0; i < 8; i++) {
        const client = connect(port, '127.0.0.1')
        client.on('error', () => {})
        clients.push(client)
      }
      await pause
      expect(pauses[0]).toBe('EMFILE')
    } finally {
      for (const fd of reserve) closeSync(fd)
      execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${limit[0]}:${limit[1]}`])
    }
    // With descriptors back, the connections waiting in the backlog are accepted.
    const accepted = await next()
    expect(accepted.fd).toBeGreaterThanOrEqual(0)
    new Socket({ fd: accepted.fd }).destroy()
    acceptor.close()
    for (const client of clients) client.destroy()
  })
})
