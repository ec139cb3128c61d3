import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { Worker } from 'node:worker_threads'
import { connect as tlsConnect } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NativeEvent, NativeOutcome, nativeAddonPath, nativeHbone, type NativeAddon, type NativeSession, type NativeTlsContext } from '../src/hbone/native'
import { closed, createTestMesh, readAll, startEchoServer, writeSvidFiles, type TestMesh } from './interop/support'
import { takeChildCrashes } from '../../../test/support/child-crashes'

// The native HBONE data path (native/hbone.c) driven directly: TLS, HTTP/2
// CONNECT, splicing, half-close, resets, flow control and descriptors, with
// real certificates from our CA, over loopback. The workload proxy's use of
// it is tested in the privileged mesh tests.

const addon = nativeHbone()
if (addon === undefined && process.env.CI) throw new Error('the native HBONE addon is not built (npm run native -w @ambientkit/proxy)')
if (addon === undefined) console.warn('[skip] native HBONE addon: not built (npm run native -w @ambientkit/proxy)')
const describeNative = addon === undefined ? describe.skip : describe

const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/api'
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/frontend'
const SETTINGS = [4 << 20, 16 << 20, 16_384, 100] as const

interface Recorded {
  readonly event: NativeEvent
  readonly args: unknown[]
}

/** A session's events, and a way to wait for one. */
class Events {
  readonly list: Recorded[] = []
  readonly #waiters: Array<{ match: (r: Recorded) => boolean; resolve: (r: Recorded) => void }> = []

  push(record: Recorded): void {
    this.list.push(record)
    for (const waiter of [...this.#waiters]) {
      if (waiter.match(record)) {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1)
        waiter.resolve(record)
      }
    }
  }

  next(event: NativeEvent, stream?: number): Promise<Recorded> {
    const match = (r: Recorded): boolean => r.event === event && (stream === undefined || r.args[0] === stream)
    const seen = this.list.find(match)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve) => this.#waiters.push({ match, resolve }))
  }
}

/** Moves a Node socket that has not read anything to the addon. */
function handOver(a: NativeAddon, socket: Socket): number {
  const fd = a.dupFd((socket as unknown as { _handle: { fd: number } })._handle.fd)
  socket.destroy()
  return fd
}

/**
 * Source defining `sessionPair(a, material, sinkPort)`: a native client
 * session connected to a native server session of the same thread, the
 * server splicing each CONNECT to 127.0.0.1:sinkPort; resolves with the
 * client session and `handOver` (a socket's descriptor, for the addon).
 */
const SESSION_PAIR_SOURCE = `
async function sessionPair(a, material, sinkPort) {
  const net = require('node:net')
  const { once } = require('node:events')
  const handOver = (socket) => { const fd = a.dupFd(socket._handle.fd); socket.destroy(); return fd }
  const settings = [4 << 20, 16 << 20, 16384, 100]
  const serverCtx = a.createContext(true, material.server.chain, material.server.key, material.roots)
  const clientCtx = a.createContext(false, material.client.chain, material.client.key, material.roots)
  const hbone = net.createServer({ pauseOnConnect: true }, (socket) => {
    const session = a.serverSession(serverCtx, handOver(socket), settings, (event, id) => {
      if (event !== a.constants.events.Request) return
      const upstream = net.connect(sinkPort, '127.0.0.1', () => a.splice(session, id, handOver(upstream)))
      upstream.pause()
    })
  }).listen(0, '127.0.0.1')
  await once(hbone, 'listening')
  const tcp = net.connect(hbone.address().port, '127.0.0.1')
  await once(tcp, 'connect')
  let ready
  const settled = new Promise((resolve) => (ready = resolve))
  const session = a.clientSession(clientCtx, handOver(tcp), settings, (event) => { if (event === a.constants.events.Settings) ready() })
  await settled
  return { session, handOver }
}
`

/**
 * A worker thread that loads the addon on its own and sends `mib` random
 * MiB through a client session, a server session and a sink, all in that
 * thread; it posts the digest it sent and the digest the sink received.
 */
const WORKER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads')
const net = require('node:net')
const crypto = require('node:crypto')
const { once } = require('node:events')
const a = require(workerData.addon)
${SESSION_PAIR_SOURCE}
;(async () => {
  const sink = net.createServer((socket) => {
    const hash = crypto.createHash('sha256')
    let bytes = 0
    socket.on('data', (chunk) => { hash.update(chunk); bytes += chunk.length })
    socket.on('end', () => { socket.end(); parentPort.postMessage({ received: hash.digest('hex'), bytes }) })
  }).listen(0, '127.0.0.1')
  await once(sink, 'listening')
  const { session, handOver } = await sessionPair(a, workerData, sink.address().port)
  const apps = net.createServer({ pauseOnConnect: true }).listen(0, '127.0.0.1')
  await once(apps, 'listening')
  const app = net.connect(apps.address().port, '127.0.0.1')
  const [inner] = await once(apps, 'connection')
  a.open(session, handOver(inner), '127.0.0.1:' + sink.address().port, [])
  const hash = crypto.createHash('sha256')
  for (let i = 0; i < workerData.mib; i++) {
    const chunk = crypto.randomBytes(1 << 20)
    hash.update(chunk)
    if (!app.write(chunk)) await once(app, 'drain')
  }
  app.end()
  parentPort.postMessage({ sent: hash.digest('hex') })
})()
`

/**
 * A process of its own with AMBIENTKIT_HBONE_THREADS set (the pool is the
 * process's): it runs WORKER_SOURCE's tunnel, then prints the digests and
 * the CPU ticks each data-path thread used, read from /proc.
 */
const THREADS_CHILD_SOURCE = `
const { Worker } = require('node:worker_threads')
const fs = require('node:fs')
const data = JSON.parse(process.env.AK_TUNNEL)
const threads = require(data.addon).threads()
const worker = new Worker(process.env.AK_WORKER_SOURCE, { eval: true, workerData: data })
const result = {}
worker.on('message', (message) => {
  Object.assign(result, message)
  if (result.sent === undefined || result.received === undefined) return
  const cpu = {}
  for (const task of fs.readdirSync('/proc/self/task')) {
    const name = fs.readFileSync('/proc/self/task/' + task + '/comm', 'utf8').trim()
    if (!name.startsWith('ak-hbone-')) continue
    const fields = fs.readFileSync('/proc/self/task/' + task + '/stat', 'utf8').split(') ')[1].split(' ')
    cpu[name] = Number(fields[11]) + Number(fields[12])  // utime + stime
  }
  process.stdout.write(JSON.stringify({ ...result, threads, cpu }))
  process.exit(0)
})
`

/**
 * A process whose only load of the addon is in a Worker: it runs
 * WORKER_SOURCE's tunnel there, ends the Worker, then prints whether the
 * addon is still mapped and how many data-path threads run (their code is
 * the addon's: unmapped under them, they crash at their next wake-up), and
 * wakes them with a second Worker's tunnel.
 */
const WORKER_ONLY_CHILD_SOURCE = `
const { Worker } = require('node:worker_threads')
const { once } = require('node:events')
const fs = require('node:fs')
const data = JSON.parse(process.env.AK_TUNNEL)
const tunnel = async () => {
  const worker = new Worker(process.env.AK_WORKER_SOURCE, { eval: true, workerData: data })
  const result = {}
  await new Promise((resolve, reject) => {
    worker.on('error', reject)
    worker.on('message', (message) => { Object.assign(result, message); if (result.sent !== undefined && result.received !== undefined) resolve() })
  })
  await worker.terminate()
  return result.sent === result.received && result.bytes === data.mib << 20
}
;(async () => {
  const first = await tunnel()
  const mapped = /ambient_hbone\\.node$/m.test(fs.readFileSync('/proc/self/maps', 'utf8'))
  const threads = fs.readdirSync('/proc/self/task').filter((task) => fs.readFileSync('/proc/self/task/' + task + '/comm', 'utf8').startsWith('ak-hbone-')).length
  const second = await tunnel()
  process.stdout.write(JSON.stringify({ first, second, mapped, threads }))
})()
`

/**
 * A process of its own carrying one tunnel (a client session and a server
 * session to itself) from an app listener to the sink at AK_SINK_PORT; it
 * prints its app port, then the test kills it mid-transfer.
 */
const KILLED_CHILD_SOURCE = `
const net = require('node:net')
const { once } = require('node:events')
const data = JSON.parse(process.env.AK_TUNNEL)
const a = require(data.addon)
${SESSION_PAIR_SOURCE}
;(async () => {
  const sink = Number(process.env.AK_SINK_PORT)
  const { session, handOver } = await sessionPair(a, data, sink)
  const apps = net.createServer({ pauseOnConnect: true }, (inner) => a.open(session, handOver(inner), '127.0.0.1:' + sink, [])).listen(0, '127.0.0.1')
  await once(apps, 'listening')
  process.stdout.write(JSON.stringify({ port: apps.address().port }) + '\\n')
})()
`

function openFds(): number {
  return readdirSync('/proc/self/fd').length
}

describeNative('native HBONE addon', () => {
  const a = addon!
  let mesh: TestMesh
  let serverCtx: NativeTlsContext
  let clientCtx: NativeTlsContext
  let echo: Awaited<ReturnType<typeof startEchoServer>>

  beforeAll(async () => {
    mesh = await createTestMesh()
    const server = await mesh.manager.get(SERVER_ID)
    const client = await mesh.manager.get(CLIENT_ID)
    serverCtx = a.createContext(true, server.certificateChainPem, server.privateKeyPem, mesh.rootsPem)
    clientCtx = a.createContext(false, client.certificateChainPem, client.privateKeyPem, mesh.rootsPem)
    echo = await startEchoServer()
  })

  afterAll(async () => {
    await echo?.close()
    await mesh?.close()
  })

  /** What the server does with a request: splice to the authority's port on loopback, unless `decide` answers a status. */
  interface Harness {
    client: NativeSession
    clientEvents: Events
    serverEvents: Events
    server: () => NativeSession
    listener: Server
    /** Opens a tunnel from a fresh app socket; resolves with the app's end and the stream id. */
    open(authority: string): Promise<{ app: Socket; id: number }>
    close(): Promise<void>
  }

  async function harness(options: { decide?: (authority: string) => number | undefined; handshake?: (chain: Buffer[]) => string | undefined; ctx?: NativeTlsContext } = {}): Promise<Harness> {
    const clientEvents = new Events()
    const serverEvents = new Events()
    let serverSession: NativeSession | undefined
    const listener = createServer({ pauseOnConnect: true }, (socket) => {
      const session = a.serverSession(serverCtx, handOver(a, socket), SETTINGS, (event, ...args) => {
        serverEvents.push({ event, args })
        if (event === NativeEvent.Handshake) return options.handshake?.(args[0] as Buffer[])
        if (event === NativeEvent.Request) {
          const [id, , authority] = args as [number, string, string]
          const status = options.decide?.(authority)
          if (status !== undefined) {
            a.respond(session, id, status)
            return undefined
          }
          const upstream = connect({ port: Number(authority.split(':')[1]), host: '127.0.0.1' }, () => a.splice(session, id, handOver(a, upstream)))
          upstream.pause()
        }
        return undefined
      })
      serverSession = session
    })
    listener.listen(0, '127.0.0.1')
    await once(listener, 'listening')
    const tcp = connect((listener.address() as AddressInfo).port, '127.0.0.1')
    await once(tcp, 'connect')
    const client = a.clientSession(options.ctx ?? clientCtx, handOver(a, tcp), SETTINGS, (event, ...args) => {
      clientEvents.push({ event, args })
      return undefined
    })
    // Apps connect through a loopback listener whose accepted ends go to the addon.
    const apps = createServer({ pauseOnConnect: true })
    apps.listen(0, '127.0.0.1')
    await once(apps, 'listening')
    return {
      client,
      clientEvents,
      serverEvents,
      server: () => serverSession!,
      listener,
      async open(authority) {
        await clientEvents.next(NativeEvent.Handshake)
        const app = connect((apps.address() as AddressInfo).port, '127.0.0.1')
        const [inner] = (await once(apps, 'connection')) as [Socket]
        const id = a.open(client, handOver(a, inner), authority, ['traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'])
        return { app, id }
      },
      async close() {
        a.destroy(client, null)
        await clientEvents.next(NativeEvent.Close)
        if (serverSession !== undefined) await serverEvents.next(NativeEvent.Close)
        listener.close()
        apps.close()
      },
    }
  }

  it('verifies the peer, tunnels with half-close both ways and counts bytes on both sides', async () => {
    const h = await harness()
    const { app, id } = await h.open(`127.0.0.1:${echo.port}`)
    const [handshake] = (await h.serverEvents.next(NativeEvent.Handshake)).args as [Buffer[]]
    expect(handshake.length).toBeGreaterThanOrEqual(1)
    const request = await h.serverEvents.next(NativeEvent.Request)
    expect(request.args.slice(1)).toEqual(['CONNECT', `127.0.0.1:${echo.port}`, ['traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01']])
    expect((await h.clientEvents.next(NativeEvent.Response, id)).args).toEqual([id, 200])
    app.end('hello through the addon')
    expect((await readAll(app)).toString()).toBe('hello through the addon')
    const clientClose = await h.clientEvents.next(NativeEvent.StreamClose, id)
    expect(clientClose.args).toEqual([id, NativeOutcome.Closed, 23, 23, null, 200, -1])
    const serverClose = await h.serverEvents.next(NativeEvent.StreamClose)
    expect(serverClose.args.slice(1)).toEqual([NativeOutcome.Closed, 23, 23, null, 200, -1])
    expect(a.streams(h.client)).toBe(0)
    await h.close()
  })

  it('keeps each direction open after the other one ended', async () => {
    // The upstream says its piece and ends first; the app keeps sending afterwards.
    const upstream = createServer({ allowHalfOpen: true }, (socket) => {
      socket.end('first from upstream')
      void readAll(socket).then((data) => upstream.emit('received', data.toString()))
    })
    upstream.listen(0, '127.0.0.1')
    await once(upstream, 'listening')
    const h = await harness()
    const { app, id } = await h.open(`127.0.0.1:${(upstream.address() as AddressInfo).port}`)
    app.allowHalfOpen = true
    expect((await readAll(app)).toString()).toBe('first from upstream')
    const received = once(upstream, 'received')
    app.end('then the app, after the FIN')
    expect((await received)[0]).toBe('then the app, after the FIN')
    expect((await h.clientEvents.next(NativeEvent.StreamClose, id)).args[1]).toBe(NativeOutcome.Closed)
    await h.close()
    upstream.close()
  })

  it('moves 64 MiB intact to a reader that keeps pausing', async () => {
    const sink = createServer((socket) => {
      const hash = createHash('sha256')
      let bytes = 0
      socket.on('data', (chunk: Buffer) => {
        hash.update(chunk)
        bytes += chunk.length
        // Stalls the stream now and then: the proxy must hold the bytes, not drop them.
        if (bytes % (4 << 20) < chunk.length) {
          socket.pause()
          setImmediate(() => socket.resume())
        }
      })
      socket.on('end', () => {
        socket.end()
        sink.emit('digest', hash.digest('hex'), bytes)
      })
    })
    sink.listen(0, '127.0.0.1')
    await once(sink, 'listening')
    const h = await harness()
    const { app, id } = await h.open(`127.0.0.1:${(sink.address() as AddressInfo).port}`)
    const sent = createHash('sha256')
    const digest = once(sink, 'digest')
    for (let i = 0; i < 64; i++) {
      const chunk = Buffer.alloc(1 << 20, i)
      sent.update(chunk)
      if (!app.write(chunk)) await once(app, 'drain')
    }
    app.end()
    expect(await digest).toEqual([sent.digest('hex'), 64 << 20])
    expect((await h.clientEvents.next(NativeEvent.StreamClose, id)).args.slice(1, 4)).toEqual([NativeOutcome.Closed, 64 << 20, 0])
    app.destroy()
    await h.close()
    sink.close()
  })

  it('turns an app reset into RST_STREAM and an upstream reset, and back', async () => {
    const upstreams: Socket[] = []
    const upstream = createServer((socket) => {
      upstreams.push(socket)
      socket.on('error', (err) => upstream.emit('upstream-error', err))
      upstream.emit('accepted')
    })
    upstream.listen(0, '127.0.0.1')
    await once(upstream, 'listening')
    const authority = `127.0.0.1:${(upstream.address() as AddressInfo).port}`
    const h = await harness()

    const first = await h.open(authority)
    await h.clientEvents.next(NativeEvent.Response, first.id)
    const upstreamError = once(upstream, 'upstream-error')
    first.app.resetAndDestroy()
    expect((await upstreamError)[0]).toMatchObject({ code: 'ECONNRESET' })
    expect((await h.clientEvents.next(NativeEvent.StreamClose, first.id)).args[1]).toBe(NativeOutcome.SocketReset)

    const second = await h.open(authority)
    await h.clientEvents.next(NativeEvent.Response, second.id)
    const appError = once(second.app, 'error')
    upstreams.at(-1)!.resetAndDestroy()
    expect((await appError)[0]).toMatchObject({ code: 'ECONNRESET' })
    expect((await h.clientEvents.next(NativeEvent.StreamClose, second.id)).args[1]).toBe(NativeOutcome.StreamReset)
    await h.close()
    upstream.close()
  })

  it('passes a status other than 200 to the client, which resets its app socket', async () => {
    const h = await harness({ decide: () => 401 })
    const { app, id } = await h.open(`127.0.0.1:${echo.port}`)
    const appError = once(app, 'error')
    expect((await h.clientEvents.next(NativeEvent.Response, id)).args).toEqual([id, 401])
    expect((await appError)[0]).toMatchObject({ code: 'ECONNRESET' })
    expect((await h.clientEvents.next(NativeEvent.StreamClose, id)).args).toEqual([id, NativeOutcome.Rejected, 0, 0, null, 401, -1])
    expect((await h.serverEvents.next(NativeEvent.StreamClose)).args.slice(1, 2)).toEqual([NativeOutcome.Rejected])
    await h.close()
  })

  it('closes the session when the handshake callback refuses the peer', async () => {
    const h = await harness({ handshake: () => 'not the expected peer' })
    expect((await h.serverEvents.next(NativeEvent.Close)).args).toEqual(['not the expected peer'])
    expect((await h.clientEvents.next(NativeEvent.Close)).args[0]).toMatch(/closed|reset|broken pipe/i)
    h.listener.close()
  })

  it('refuses a client that does not offer ALPN h2', async () => {
    const h = await harness()
    const port = (h.listener.address() as AddressInfo).port
    const client = await mesh.manager.get(CLIENT_ID)
    const tls = tlsConnect({ port, host: '127.0.0.1', key: client.privateKeyPem, cert: client.certificateChainPem, ca: mesh.rootsPem, ALPNProtocols: ['http/1.1'], rejectUnauthorized: false })
    const [err] = (await once(tls, 'error')) as [Error]
    expect(err.message).toMatch(/no application protocol|alert/i)
    await h.close()
  })

  it('answers PING, and after GOAWAY lets open tunnels finish before both sessions close cleanly', async () => {
    const h = await harness()
    const { app, id } = await h.open(`127.0.0.1:${echo.port}`)
    await h.clientEvents.next(NativeEvent.Response, id)
    a.ping(h.client)
    await h.clientEvents.next(NativeEvent.PingAck)
    a.shutdown(h.server())
    expect((await h.clientEvents.next(NativeEvent.GoAway)).args[0]).toBe(id)
    // No new stream on a session that is going away.
    expect(a.open(h.client, a.dupFd(0), `127.0.0.1:${echo.port}`, [])).toBe(-1)
    app.end('still carried')
    expect((await readAll(app)).toString()).toBe('still carried')
    expect((await h.serverEvents.next(NativeEvent.Close)).args).toEqual([null])
    await h.clientEvents.next(NativeEvent.Close)
    h.listener.close()
  })

  it('leaves no descriptor behind after many tunnels and a destroyed session', async () => {
    const before = openFds()
    const upstream = await startEchoServer()
    const h = await harness()
    const tunnels: Array<{ app: Socket; id: number }> = []
    for (let i = 0; i < 50; i++) tunnels.push(await h.open(`127.0.0.1:${upstream.port}`))
    await Promise.all(tunnels.map(({ id }) => h.clientEvents.next(NativeEvent.Response, id)))
    // Half of them end cleanly; the session is destroyed under the other half.
    await Promise.all(
      tunnels.slice(0, 25).map(async ({ app }) => {
        app.end('x')
        await readAll(app)
      }),
    )
    for (const { app } of tunnels.slice(25)) app.on('error', () => {})
    a.destroy(h.client, 'test over')
    const resets = await Promise.all(tunnels.slice(25).map(({ id }) => h.clientEvents.next(NativeEvent.StreamClose, id)))
    expect(new Set(resets.map((r) => r.args[1]))).toEqual(new Set([NativeOutcome.StreamReset]))
    expect((await h.clientEvents.next(NativeEvent.Close)).args).toEqual(['test over'])
    await Promise.all(tunnels.map(({ app }) => (app.destroyed ? undefined : closed(app))))
    await h.close()
    await upstream.close()
    expect(openFds()).toBe(before)
  })

  /** What WORKER_SOURCE needs to run a tunnel of `mib` MiB. */
  async function tunnelData(mib: number): Promise<Record<string, unknown>> {
    const [server, client] = await Promise.all([mesh.manager.get(SERVER_ID), mesh.manager.get(CLIENT_ID)])
    return {
      addon: nativeAddonPath(),
      roots: mesh.rootsPem,
      server: { chain: server.certificateChainPem, key: server.privateKeyPem },
      client: { chain: client.certificateChainPem, key: client.privateKeyPem },
      mib,
    }
  }

  /** Runs THREADS_CHILD_SOURCE with AMBIENTKIT_HBONE_THREADS=`threads`; resolves with what it printed, or rejects with its stderr. */
  async function threadsChild(threads: string, mib: number): Promise<{ sent: string; received: string; bytes: number; threads: number; cpu: Record<string, number> }> {
    const env = { ...process.env, AMBIENTKIT_HBONE_THREADS: threads, AK_TUNNEL: JSON.stringify(await tunnelData(mib)), AK_WORKER_SOURCE: WORKER_SOURCE }
    return new Promise((resolve, reject) => {
      execFile(process.execPath, ['-e', THREADS_CHILD_SOURCE], { env, timeout: 60_000 }, (err, stdout, stderr) => {
        if (err !== null) reject(new Error(`${err.message}\n${stderr}`))
        else resolve(JSON.parse(stdout))
      })
    })
  }

  it('spreads the two ends of a tunnel over two data-path threads, as AMBIENTKIT_HBONE_THREADS sets', async () => {
    const result = await threadsChild('2', 128)
    expect(result.threads).toBe(2)
    expect(result.bytes).toBe(128 << 20)
    expect(result.received).toBe(result.sent)
    // The client session (encrypting) went to the first thread and the server session (decrypting)
    // to the second: each thread did a real share of the work, not one thread all of it.
    expect(Object.keys(result.cpu).sort()).toEqual(['ak-hbone-0', 'ak-hbone-1'])
    const ticks = Object.values(result.cpu)
    const total = ticks.reduce((sum, n) => sum + n, 0)
    expect(total).toBeGreaterThan(0)
    for (const share of ticks) expect(share).toBeGreaterThanOrEqual(total / 5)
  })

  it('refuses an AMBIENTKIT_HBONE_THREADS that is not a thread count, naming it', async () => {
    await expect(threadsChild('none', 1)).rejects.toThrow(/AMBIENTKIT_HBONE_THREADS must be a whole number from 1 to 64.*got 'none'/)
    await expect(threadsChild('0', 1)).rejects.toThrow(/ERR_AMBIENT_HBONE_THREADS|AMBIENTKIT_HBONE_THREADS must be/)
    // Both children died of it, as they must: crashes on purpose, not for the harness to report.
    expect(takeChildCrashes()).toEqual([expect.stringContaining("got 'none'"), expect.stringContaining("got '0'")])
    // The package says so too, rather than falling back to the Node data path as it does for an addon that is not built.
    const source = "import('./packages/proxy/src/hbone/native.ts').then((m) => { try { m.nativeHbone(); console.log('loaded') } catch (err) { console.log(err.code) } })"
    const printed = execFileSync(process.execPath, ['--import', 'tsx', '-e', source], {
      cwd: new URL('../../..', import.meta.url).pathname,
      env: { ...process.env, AMBIENTKIT_HBONE_THREADS: '2.5' },
      encoding: 'utf8',
    })
    expect(printed.trim()).toBe('ERR_AMBIENT_HBONE_THREADS')
  })

  it('carries tunnels from two worker threads at once over the shared data-path threads', async () => {
    // Sessions of two environments share the data-path threads and each thread's
    // decryption buffer; each environment's events reach its own loop.
    const workerData = await tunnelData(32)
    const run = async (): Promise<{ sent: string; received: string; bytes: number }> => {
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData })
      try {
        const result: { sent?: string; received?: string; bytes?: number } = {}
        await new Promise<void>((resolve, reject) => {
          worker.on('error', reject)
          worker.on('message', (message: typeof result) => {
            Object.assign(result, message)
            if (result.sent !== undefined && result.received !== undefined) resolve()
          })
        })
        return result as { sent: string; received: string; bytes: number }
      } finally {
        await worker.terminate()
      }
    }
    const results = await Promise.all([run(), run()])
    for (const result of results) {
      expect(result.bytes).toBe(32 << 20)
      expect(result.received).toBe(result.sent)
    }
  })

  it('stays loaded, with its data-path threads, after the only Worker that loaded it ends', async () => {
    // Node unloads an addon with the last environment that loaded it; the threads would then run unmapped code.
    const env = { ...process.env, AK_TUNNEL: JSON.stringify(await tunnelData(4)), AK_WORKER_SOURCE: WORKER_SOURCE }
    const printed = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['-e', WORKER_ONLY_CHILD_SOURCE], { env, timeout: 60_000 }, (err, stdout, stderr) => {
        if (err !== null) reject(new Error(`${err.message} (signal ${err.signal ?? 'none'})\n${stderr}`))
        else resolve(stdout)
      })
    })
    expect(JSON.parse(printed)).toEqual({ first: true, second: true, mapped: true, threads: expect.any(Number) })
    expect(JSON.parse(printed).threads).toBeGreaterThan(0)
  })

  it('resets both ends of a tunnel when its process is killed mid-transfer, never ends them as if complete', async () => {
    // The kernel closes a killed process's sockets: without SO_LINGER 0 the sink would read a FIN, a clean end.
    const sink = createServer()
    sink.listen(0, '127.0.0.1')
    await once(sink, 'listening')
    const env = { ...process.env, AK_TUNNEL: JSON.stringify(await tunnelData(1)), AK_SINK_PORT: String((sink.address() as AddressInfo).port) }
    const child = spawn(process.execPath, ['-e', KILLED_CHILD_SOURCE], { env, stdio: ['ignore', 'pipe', 'inherit'] })
    try {
      const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string]
      const sinkEnd = new Promise<{ bytes: number; end: string }>((resolve) => {
        sink.once('connection', (socket: Socket) => {
          let bytes = 0
          socket.on('data', (chunk: Buffer) => {
            bytes += chunk.length
            // Well into the transfer: the proxy dies.
            if (bytes >= 4 << 20 && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
          })
          socket.once('end', () => resolve({ bytes, end: 'FIN' }))
          socket.once('error', (err: NodeJS.ErrnoException) => resolve({ bytes, end: err.code ?? err.message }))
        })
      })
      const app = connect(JSON.parse(line).port, '127.0.0.1')
      const appEnd = new Promise<string>((resolve) => {
        app.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
        app.once('end', () => resolve('FIN'))
      })
      const chunk = Buffer.alloc(1 << 20, 7)
      // Bounded: 256 MiB at most; the kill comes after 4 MiB.
      for (let i = 0; i < 256 && !app.destroyed; i++) if (!app.write(chunk)) await Promise.race([once(app, 'drain'), appEnd])
      const ended = await sinkEnd
      expect(ended.bytes).toBeGreaterThanOrEqual(4 << 20)
      expect(ended.end).toBe('ECONNRESET')
      expect(await appEnd).toMatch(/^(ECONNRESET|EPIPE)$/)
    } finally {
      child.kill('SIGKILL')
      sink.close()
    }
  })

  it('names the part of a context that is wrong', () => {
    expect(() => a.createContext(true, 'not a certificate', 'not a key', mesh.rootsPem)).toThrow(/certificate chain/)
    expect(() => a.createContext(false, mesh.rootsPem, 'not a key', mesh.rootsPem)).toThrow(/private key/)
  })
})

function goSkipReason(): string | undefined {
  try {
    execFileSync('go', ['version'], { stdio: 'ignore' })
    return undefined
  } catch {
    if (process.env.CI) throw new Error('interop tests cannot run under CI: `go` is not installed (apt-get install golang-go)')
    return '`go` is not installed (apt-get install golang-go)'
  }
}

const goSkip = addon === undefined ? 'addon not built' : goSkipReason()
if (goSkip !== undefined) console.warn(`[skip] native HBONE interop with Go: ${goSkip}`)

// The same Go program as hbone-interop.test.ts: Go's net/http as the foreign HTTP/2 stack.
;(goSkip === undefined ? describe : describe.skip)('native HBONE interop with Go net/http', () => {
  const a = addon!
  let dir: string
  let binary: string
  let mesh: TestMesh
  let echo: Awaited<ReturnType<typeof startEchoServer>>
  let files: { client: Awaited<ReturnType<typeof writeSvidFiles>>; server: Awaited<ReturnType<typeof writeSvidFiles>> }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ak-native-go-'))
    binary = join(dir, 'hbone')
    mkdirSync(join(dir, 'gopath'))
    execFileSync('go', ['build', '-o', binary, new URL('./interop/go/hbone.go', import.meta.url).pathname], {
      env: { ...process.env, GOCACHE: join(tmpdir(), 'ambientkit-hbone-gocache'), GOPATH: join(dir, 'gopath'), GO111MODULE: 'off', GOPROXY: 'off', GOFLAGS: '' },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    mesh = await createTestMesh()
    files = {
      client: await writeSvidFiles(mesh, 'spiffe://cluster.local/ns/go/sa/client', dir, 'go-client'),
      server: await writeSvidFiles(mesh, 'spiffe://cluster.local/ns/go/sa/server', dir, 'go-server'),
    }
    echo = await startEchoServer()
  }, 180_000)

  afterAll(async () => {
    await echo?.close()
    await mesh?.close()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  it('serves a Go client: CONNECT, half-close and the traceparent header', async () => {
    const svid = await mesh.manager.get(SERVER_ID)
    const ctx = a.createContext(true, svid.certificateChainPem, svid.privateKeyPem, mesh.rootsPem)
    const events = new Events()
    const listener = createServer({ pauseOnConnect: true }, (socket) => {
      const session = a.serverSession(ctx, handOver(a, socket), SETTINGS, (event, ...args) => {
        events.push({ event, args })
        if (event === NativeEvent.Request) {
          const upstream = connect({ port: echo.port, host: '127.0.0.1' }, () => a.splice(session, args[0] as number, handOver(a, upstream)))
          upstream.pause()
        }
        return undefined
      })
    })
    listener.listen(0, '127.0.0.1')
    await once(listener, 'listening')
    const addr = `127.0.0.1:${(listener.address() as AddressInfo).port}`
    const result = await new Promise<{ stdout: string; stderr: string }>((resolve) =>
      execFile(binary, ['client', addr, `127.0.0.1:${echo.port}`, SERVER_ID, files.client.cert, files.client.key, files.client.ca], { timeout: 30_000 }, (_err, stdout, stderr) =>
        resolve({ stdout, stderr }),
      ),
    )
    expect(result.stderr).toBe('')
    expect(result.stdout).toBe('status 200\nbody hello from go\n')
    const request = await events.next(NativeEvent.Request)
    expect(request.args[1]).toBe('CONNECT')
    expect(request.args[3]).toContain('traceparent')
    expect((await events.next(NativeEvent.StreamClose)).args.slice(1, 4)).toEqual([NativeOutcome.Closed, 13, 13])
    listener.close()
  })

  it('tunnels through a Go server, which sees our CONNECT', async () => {
    const child: ChildProcess = spawn(binary, ['server', '127.0.0.1:0', files.server.cert, files.server.key, files.server.ca], { stdio: ['ignore', 'pipe', 'pipe'] })
    try {
      const lines = createInterface({ input: child.stdout! })
      const connects: string[] = []
      const addr = await new Promise<string>((resolve, reject) => {
        child.once('exit', (code) => reject(new Error(`Go server exited with ${code}`)))
        lines.on('line', (line) => {
          if (line.startsWith('listening ')) resolve(line.slice('listening '.length))
          else if (line.startsWith('connect ')) connects.push(line.slice('connect '.length))
        })
      })
      const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))]
      const tcp = connect(port, host)
      await once(tcp, 'connect')
      const events = new Events()
      const svid = await mesh.manager.get(CLIENT_ID)
      const ctx = a.createContext(false, svid.certificateChainPem, svid.privateKeyPem, mesh.rootsPem)
      const session = a.clientSession(ctx, handOver(a, tcp), SETTINGS, (event, ...args) => {
        events.push({ event, args })
        return undefined
      })
      await events.next(NativeEvent.Handshake)
      const apps = createServer({ pauseOnConnect: true }).listen(0, '127.0.0.1')
      await once(apps, 'listening')
      const app = connect((apps.address() as AddressInfo).port, '127.0.0.1')
      const [inner] = (await once(apps, 'connection')) as [Socket]
      const id = a.open(session, handOver(a, inner), `127.0.0.1:${echo.port}`, [])
      expect((await events.next(NativeEvent.Response, id)).args).toEqual([id, 200])
      app.end('hello from the addon')
      expect((await readAll(app)).toString()).toBe('hello from the addon')
      expect(connects.at(-1)).toBe(`${CLIENT_ID} 127.0.0.1:${echo.port}`)
      a.destroy(session, null)
      await events.next(NativeEvent.Close)
      apps.close()
    } finally {
      child.kill()
    }
  })
})
