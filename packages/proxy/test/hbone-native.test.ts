import { once } from 'node:events'
import { readdirSync } from 'node:fs'
import http2 from 'node:http2'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { createServer as createTlsServer, connect as tlsConnect, type TLSSocket } from 'node:tls'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { abortError, type SocketAddress } from '@ambientkit/core'
import { attachTlsServer, createCertificateAuthority } from '@ambientkit/identity'
import { createNativeHboneClient, type NativeHboneClient, type NativeHboneClientOptions } from '../src/hbone/native-client'
import { createNativeHboneServer, type NativeHboneServer, type NativeHboneServerOptions } from '../src/hbone/native-server'
import { detachSocket, type NativeTunnel } from '../src/hbone/native-tunnel'
import { createHboneServer, type HboneDecision, type HboneHandshakeFailure, type HboneRequest, type HboneTunnelRecord, type SpliceResult } from '@ambientkit/proxy'
import { closed, createTestMesh, echoStream, readAll, startEchoServer, startScriptedHttp2Server, type TestMesh } from './interop/support'
import { waitFor } from './support/apps'
import { nativeAddonOrSkip } from './support/native'
import { craft } from '../../identity/test/craft'

// The native client and server of the workload proxy's native data path,
// paired over loopback with certificates from our CA. The privileged mesh
// tests run the same through network namespaces.

const addon = nativeAddonOrSkip('native HBONE client and server')
const describeNative = addon === undefined ? describe.skip : describe

const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/api'
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/frontend'
const OTHER_ID = 'spiffe://cluster.local/ns/shop/sa/admin'

const openFds = (): number => readdirSync('/proc/self/fd').length

const loopback = (port: number): SocketAddress => ({ address: '127.0.0.1', port, family: 4 })

/** A connected loopback socket's descriptor, Node never having read from it (what `Netns.connectFd` gives the proxy). */
function connectFd(port: number, signal: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, noDelay: true })
    const onAbort = (): void => {
      socket.destroy()
      reject(abortError(signal, 'connect'))
    }
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('error', (err) => {
      signal.removeEventListener('abort', onAbort)
      reject(err)
    })
    socket.once('connect', () => {
      signal.removeEventListener('abort', onAbort)
      // Paused before Node's first read, which follows the 'connect' event.
      socket.pause()
      resolve(detachSocket(addon!, socket))
    })
  })
}

/** A TCP server on loopback keeping half-close; its connections are destroyed when the test ends. */
async function startServer(onSocket: (socket: Socket) => void): Promise<{ port: number }> {
  const sockets = new Set<Socket>()
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    onSocket(socket)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  )
  return { port: (server.address() as AddressInfo).port }
}

const closers: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close()
})

function deferred<T>(): { promise: Promise<T>; resolve(value: T): void } {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((r) => (resolve = r))
  return { promise, resolve }
}

describeNative('native HBONE client and server', () => {
  let mesh: TestMesh
  let echo: Awaited<ReturnType<typeof startEchoServer>>

  beforeAll(async () => {
    mesh = await createTestMesh()
    echo = await startEchoServer()
  })

  afterAll(async () => {
    await echo?.close()
    await mesh?.close()
  })

  interface Harness {
    server: NativeHboneServer
    client: NativeHboneClient
    via: SocketAddress
    records: HboneTunnelRecord[]
    requests: HboneRequest[]
    failures: HboneHandshakeFailure[]
    /** Resolves with the next finished tunnel record. */
    nextRecord(): Promise<HboneTunnelRecord>
    /** A fresh application connection: `app` is what the application holds, `accepted` the proxy's paused end. */
    app(): Promise<{ app: Socket; accepted: Socket }>
    /** Opens a tunnel for a fresh application connection. */
    open(destination: SocketAddress, options?: { expected?: string[]; signal?: AbortSignal }): Promise<{ app: Socket; accepted: Socket; tunnel: Promise<NativeTunnel> }>
  }

  async function harness(
    server: Partial<NativeHboneServerOptions> = {},
    client: Partial<NativeHboneClientOptions> = {},
  ): Promise<Harness> {
    const records: HboneTunnelRecord[] = []
    const requests: HboneRequest[] = []
    const failures: HboneHandshakeFailure[] = []
    const waiters: Array<(record: HboneTunnelRecord) => void> = []
    const hbone = createNativeHboneServer({
      addon: addon!,
      identities: mesh.manager,
      identity: SERVER_ID,
      decide: (request): HboneDecision => {
        requests.push(request)
        return { action: 'serve' }
      },
      connect: (destination, { signal }) => connectFd(destination.port, signal),
      onTunnel: (record) => {
        records.push(record)
        waiters.shift()?.(record)
      },
      onHandshakeFailure: (failure) => failures.push(failure),
      ...server,
    })
    const listener = createServer({ pauseOnConnect: true }, (socket) => hbone.handle(socket))
    listener.listen(0, '127.0.0.1')
    await once(listener, 'listening')
    const native = createNativeHboneClient({
      addon: addon!,
      identities: mesh.manager,
      socketFactory: (address, { signal }) => connectFd(address.port, signal),
      ...client,
    })
    // What the workload proxy's outbound listener does: accepted ends stay paused until handed over.
    const accepting = new Map<number, (accepted: Socket) => void>()
    const appSockets = new Set<Socket>()
    const apps = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (accepted) => {
      appSockets.add(accepted)
      accepting.get(accepted.remotePort!)?.(accepted)
    })
    apps.listen(0, '127.0.0.1')
    await once(apps, 'listening')
    closers.push(
      () =>
        new Promise<void>((resolve) => {
          for (const socket of appSockets) socket.destroy()
          apps.close(() => resolve())
        }),
      () => new Promise<void>((resolve) => listener.close(() => resolve())),
      () => hbone.close(),
      () => native.close(),
    )
    const via = loopback((listener.address() as AddressInfo).port)
    const app = async (): Promise<{ app: Socket; accepted: Socket }> => {
      const socket = connect({ host: '127.0.0.1', port: (apps.address() as AddressInfo).port, allowHalfOpen: true })
      // Resets are what several tests provoke; each checks the ones it expects.
      socket.on('error', () => {})
      appSockets.add(socket)
      await once(socket, 'connect')
      const accepted = await new Promise<Socket>((resolve) => {
        const known = [...appSockets].find((candidate) => candidate !== socket && candidate.remotePort === socket.localPort)
        if (known !== undefined) resolve(known)
        else accepting.set(socket.localPort!, resolve)
      })
      accepting.delete(socket.localPort!)
      return { app: socket, accepted }
    }
    return {
      server: hbone,
      client: native,
      via,
      records,
      requests,
      failures,
      nextRecord: () => new Promise((resolve) => waiters.push(resolve)),
      app,
      async open(destination, options = {}) {
        const { app: socket, accepted } = await app()
        const tunnel = native.open(accepted, destination, {
          identity: CLIENT_ID,
          expectedIdentities: options.expected ?? [SERVER_ID],
          via,
          headers: { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' },
          ...(options.signal ? { signal: options.signal } : {}),
        })
        return { app: socket, accepted, tunnel }
      },
    }
  }

  const endOf = (tunnel: NativeTunnel): Promise<SpliceResult> => new Promise((resolve) => tunnel.onClose(resolve))

  it('tunnels bytes to the destination and back, with both identities verified and the same record as the Node server', async () => {
    const h = await harness()
    const record = h.nextRecord()
    const { app, tunnel } = await h.open(loopback(echo.port))
    const opened = await tunnel
    const ended = endOf(opened)
    app.end('hello through native HBONE')
    expect((await readAll(app)).toString()).toBe('hello through native HBONE')
    expect(await ended).toMatchObject({ outcome: 'closed', socketBytesRead: 26, socketBytesWritten: 26 })
    expect(await record).toMatchObject({
      peerIdentity: CLIENT_ID,
      peerAddress: { address: '127.0.0.1' },
      status: 200,
      outcome: 'closed',
      destination: { address: '127.0.0.1', port: echo.port, family: 4 },
      bytesReceived: 26,
      bytesSent: 26,
    })
    expect(h.requests[0]).toMatchObject({ peerIdentity: CLIENT_ID, traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' })
    expect(h.client.stats()).toEqual([expect.objectContaining({ peerIdentity: SERVER_ID, streams: 0 })])
    expect(h.server.stats()).toEqual({ connections: 1, sessions: 1, tunnels: 0 })
  })

  it('keeps half-close both ways: the app FIN reaches upstream, which can still answer', async () => {
    const upstream = await startServer((socket) => {
      const chunks: Buffer[] = []
      socket.on('data', (chunk: Buffer) => chunks.push(chunk))
      socket.on('end', () => socket.end(`got ${Buffer.concat(chunks).toString()}`))
    })
    const h = await harness()
    const record = h.nextRecord()
    const { app, tunnel } = await h.open(loopback(upstream.port))
    await tunnel
    app.end('ping')
    expect((await readAll(app)).toString()).toBe('got ping')
    expect((await record).outcome).toBe('closed')
  })

  it('keeps half-close both ways: the upstream FIN reaches the app, which can still send', async () => {
    const received = deferred<string>()
    const upstream = await startServer((socket) => {
      const chunks: Buffer[] = []
      socket.on('data', (chunk: Buffer) => chunks.push(chunk))
      socket.on('end', () => received.resolve(Buffer.concat(chunks).toString()))
      socket.end('hello first')
    })
    const h = await harness()
    const { app, tunnel } = await h.open(loopback(upstream.port))
    const ended = endOf(await tunnel)
    expect((await readAll(app)).toString()).toBe('hello first')
    const appClosed = closed(app)
    app.end('late reply')
    expect(await received.promise).toBe('late reply')
    await appClosed
    expect((await ended).outcome).toBe('closed')
  })

  it('propagates an app reset to the upstream as a reset, and an upstream reset back to the app', async () => {
    const upstreamClosed = deferred<string | undefined>()
    const accepted = deferred<Socket>()
    const upstream = await startServer((socket) => {
      let error: string | undefined
      socket.on('error', (err: NodeJS.ErrnoException) => (error = err.code))
      socket.on('close', () => upstreamClosed.resolve(error))
      socket.resume()
      accepted.resolve(socket)
    })
    const h = await harness()
    let record = h.nextRecord()
    const first = await h.open(loopback(upstream.port))
    const ended = endOf(await first.tunnel)
    await accepted.promise
    first.app.resetAndDestroy()
    expect(await upstreamClosed.promise).toBe('ECONNRESET')
    expect((await ended).outcome).toBe('socket-reset')
    expect((await record).outcome).toBe('stream-reset')

    const resetting = await startServer((socket) => socket.once('data', () => socket.resetAndDestroy()))
    record = h.nextRecord()
    const second = await h.open(loopback(resetting.port))
    await second.tunnel
    const appError = deferred<string | undefined>()
    second.app.on('error', (err: NodeJS.ErrnoException) => appError.resolve(err.code))
    second.app.on('close', () => appError.resolve(undefined))
    second.app.write('reset me')
    expect(await appError.promise).toBe('ECONNRESET')
    expect((await record).outcome).toBe('socket-reset')
  })

  it('resets both ends when the proxy resets an established tunnel (policy termination)', async () => {
    const upstreamClosed = deferred<string | undefined>()
    const upstream = await startServer((socket) => {
      let error: string | undefined
      socket.on('error', (err: NodeJS.ErrnoException) => (error = err.code))
      socket.on('close', () => upstreamClosed.resolve(error))
      socket.resume()
      socket.write('ready')
    })
    const h = await harness()
    const { app, tunnel } = await h.open(loopback(upstream.port))
    const opened = await tunnel
    await once(app, 'data')
    const appError = deferred<string | undefined>()
    app.on('error', (err: NodeJS.ErrnoException) => appError.resolve(err.code))
    app.on('close', () => appError.resolve(undefined))
    opened.resetAndDestroy()
    expect(await appError.promise).toBe('ECONNRESET')
    expect(await upstreamClosed.promise).toBe('ECONNRESET')
    expect(opened.closed).toBe(true)
  })

  it('fails the open with IDENTITY_MISMATCH when the server is not an expected identity, leaving the app untouched and pooling nothing', async () => {
    const h = await harness()
    const { accepted, tunnel } = await h.open(loopback(echo.port), { expected: [OTHER_ID] })
    await expect(tunnel).rejects.toMatchObject({ code: 'ERR_AMBIENT_HBONE_IDENTITY_MISMATCH', message: expect.stringContaining(`presented ${SERVER_ID}`) })
    expect(accepted.destroyed).toBe(false)
    accepted.destroy()
    expect(h.client.stats()).toEqual([])
  })

  it('answers a denied CONNECT with 401, which fails the open with its status and resets the app', async () => {
    const h = await harness({ decide: () => ({ action: 'deny', reason: 'no-allow-policy-matched', policy: 'shop/deny-all' }) })
    const record = h.nextRecord()
    const { app, tunnel } = await h.open(loopback(echo.port))
    const appClosed = new Promise<string | undefined>((resolve) => {
      let error: string | undefined
      app.on('error', (err: NodeJS.ErrnoException) => (error = err.code))
      app.on('close', () => resolve(error))
    })
    await expect(tunnel).rejects.toMatchObject({ code: 'ERR_AMBIENT_HBONE_STATUS', details: { status: 401 } })
    expect(await record).toMatchObject({ status: 401, outcome: 'rejected', reason: 'no-allow-policy-matched', policy: 'shop/deny-all' })
    expect(await appClosed).toBe('ECONNRESET')
  })

  it('answers 400, 503 and 500 as the Node server does', async () => {
    const h = await harness({
      decide: ({ destination }): HboneDecision => {
        if (destination.port === 1) return { action: 'not-served', reason: 'not here' }
        if (destination.port === 2) return { action: 'unknown', reason: 'who?' }
        if (destination.port === 3) throw new Error('boom')
        return { action: 'serve' }
      },
      connect: () => Promise.reject(new Error('ECONNREFUSED')),
    })
    for (const [port, status, reason] of [[1, 400, 'not here'], [2, 503, 'who?'], [3, 500, 'decide-failed'], [4, 503, 'upstream-connect-failed']] as const) {
      const record = h.nextRecord()
      const { tunnel } = await h.open(loopback(port))
      await expect(tunnel).rejects.toMatchObject({ details: { status } })
      expect(await record).toMatchObject({ status, outcome: 'rejected', reason })
    }
  })

  it('shares sessions up to maxStreamsPerSession, then opens another; idle sessions close on both sides', async () => {
    const h = await harness({}, { maxStreamsPerSession: 2, idleTimeout: 200 })
    const opens = await Promise.all([0, 1, 2].map(() => h.open(loopback(echo.port))))
    await Promise.all(opens.map((o) => o.tunnel))
    expect(h.client.stats().map((s) => s.streams).sort()).toEqual([1, 2])
    expect(h.server.stats()).toMatchObject({ sessions: 2, tunnels: 3 })
    await Promise.all(opens.map(async ({ app }) => {
      app.end('x')
      await readAll(app)
    }))
    const deadline = Date.now() + 5000
    while ((h.client.stats().length > 0 || h.server.stats().connections > 0) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    expect(h.client.stats()).toEqual([])
    expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 })
  })

  /** Opens two tunnels at once through `via` and returns the streams of each client session while both are open. */
  async function twoTunnels(h: Harness, via: SocketAddress): Promise<number[]> {
    const opens = await Promise.all([0, 1].map(() => h.app()))
    const tunnels = await Promise.all(opens.map(({ accepted }) => h.client.open(accepted, loopback(echo.port), { identity: CLIENT_ID, expectedIdentities: [SERVER_ID], via })))
    expect(tunnels.every((tunnel) => !tunnel.closed)).toBe(true)
    const streams = h.client.stats().map((s) => s.streams)
    await Promise.all(opens.map(async ({ app }) => {
      app.end('x')
      expect((await readAll(app)).toString()).toBe('x')
    }))
    return streams
  }

  it("honours the native server's SETTINGS_MAX_CONCURRENT_STREAMS: a second tunnel opens a second session", async () => {
    const h = await harness({ maxConcurrentStreams: 1 }, { maxStreamsPerSession: 10 })
    expect(await twoTunnels(h, h.via)).toEqual([1, 1])
  })

  it("honours the Node HBONE server's maxConcurrentStreams as the Node client does", async () => {
    const server = createHboneServer({ tls: await mesh.serverTls(SERVER_ID), decide: () => ({ action: 'serve' }), maxConcurrentStreams: 1 })
    const bound = await server.listen(0, '127.0.0.1')
    closers.push(() => server.close())
    const h = await harness({}, { maxStreamsPerSession: 10 })
    expect(await twoTunnels(h, loopback(bound.port))).toEqual([1, 1])
  })

  it('aborting an open before the answer resets the stream and frees its slot', async () => {
    const decided = deferred<void>()
    const h = await harness({
      decide: async () => {
        decided.resolve()
        await new Promise((resolve) => setTimeout(resolve, 200))
        return { action: 'serve' }
      },
    })
    const controller = new AbortController()
    const record = h.nextRecord()
    const { tunnel } = await h.open(loopback(echo.port), { signal: controller.signal })
    await decided.promise
    controller.abort()
    await expect(tunnel).rejects.toMatchObject({ code: 'ERR_AMBIENT_ABORTED' })
    expect(await record).toMatchObject({ status: 0, outcome: 'cancelled' })
    expect(h.client.stats()[0]?.streams).toBe(0)
  })

  it('drain sends GOAWAY, lets an open tunnel finish, then closes; the client opens a new session elsewhere', async () => {
    const h = await harness()
    const { app, tunnel } = await h.open(loopback(echo.port))
    await tunnel
    const drained = h.server.drain()
    let done = false
    void drained.then(() => (done = true))
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(done).toBe(false)
    // The session got GOAWAY: it left the pool, its tunnel still works.
    expect(h.client.stats()).toEqual([])
    app.end('still served')
    expect((await readAll(app)).toString()).toBe('still served')
    await drained
    expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 })
  })

  it('reports a client from another trust domain as an identity failure at the handshake', async () => {
    const foreign = await createTestMesh('other.example')
    try {
      const h = await harness()
      const client = createNativeHboneClient({
        addon: addon!,
        identities: foreign.manager,
        socketFactory: (address, { signal }) => connectFd(address.port, signal),
      })
      closers.push(() => client.close())
      const { accepted } = await h.app()
      const opening = client.open(accepted, loopback(echo.port), { identity: 'spiffe://other.example/ns/x/sa/y', expectedIdentities: [SERVER_ID], via: h.via })
      // The server is not of a trust domain the foreign client trusts either: OpenSSL refuses it first.
      await expect(opening).rejects.toMatchObject({ code: 'ERR_AMBIENT_HBONE_CONNECT_FAILED' })
      accepted.destroy()
      const deadline = Date.now() + 5000
      while (h.failures.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
      expect(h.failures[0]).toMatchObject({ reason: 'tls', peerAddress: { address: '127.0.0.1' } })
    } finally {
      await foreign.close()
    }
  })

  it('refuses a client whose SVID chains to a trusted root of another trust domain (the SPIFFE check OpenSSL does not make)', async () => {
    const local = await createTestMesh()
    closers.push(() => local.close())
    const otherCa = await createCertificateAuthority({ trustDomain: 'other.org' })
    local.manager.bundles.set(otherCa.bundle)
    const h = await harness({ identities: local.manager })
    // cluster.local's CA signs an other.org ID: OpenSSL accepts the chain, SPIFFE does not.
    const crossed = await craft(local.ca, { uris: ['spiffe://other.org/w'] })
    const socket = tlsConnect({
      host: '127.0.0.1',
      port: h.via.port,
      minVersion: 'TLSv1.3',
      ALPNProtocols: ['h2'],
      key: crossed.key.export({ type: 'pkcs8', format: 'pem' }),
      cert: crossed.pem,
      ca: local.rootsPem,
      checkServerIdentity: () => undefined,
    })
    socket.on('error', () => {})
    await closed(socket)
    expect(h.failures).toEqual([expect.objectContaining({ reason: 'identity', error: expect.objectContaining({ code: 'ERR_AMBIENT_SVID_REJECTED' }) })])
    // The session's thread closes the socket, then tells JavaScript: the count follows the client's close.
    await waitFor(() => h.server.stats().connections === 0)
    expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 })
  })

  it("tunnels through Node's HTTP/2 server and keeps the session alive with PINGs it answers", async () => {
    const options = await mesh.serverTls(SERVER_ID)
    const server = http2.createSecureServer({ ...options, ALPNProtocols: ['h2'] })
    const binding = attachTlsServer(server, options)
    let pings = 0
    server.on('session', (session) => session.on('ping', () => pings++))
    server.on('stream', (stream) => {
      stream.respond({ ':status': 200 })
      stream.pipe(stream)
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    closers.push(() => new Promise<void>((resolve) => {
      binding.close()
      server.close(() => resolve())
    }))
    const h = await harness({}, { keepaliveInterval: 20, keepaliveTimeout: 100 })
    const { app, accepted } = await h.app()
    const tunnel = await h.client.open(accepted, loopback(echo.port), {
      identity: CLIENT_ID,
      expectedIdentities: [SERVER_ID],
      via: loopback((server.address() as AddressInfo).port),
    })
    const deadline = Date.now() + 5000
    while (pings < 5 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    // Answered PINGs keep it: five intervals are past the timeout.
    expect(pings).toBeGreaterThanOrEqual(5)
    expect(tunnel.closed).toBe(false)
    const ended = endOf(tunnel)
    app.end('through node')
    expect((await readAll(app)).toString()).toBe('through node')
    expect((await ended).outcome).toBe('closed')
  })

  /** A scripted Node HTTP/2 server presenting SERVER_ID, closed after the test. */
  async function nodeServer(onStream: (stream: http2.ServerHttp2Stream, index: number) => void): Promise<{ via: SocketAddress; sessions: Set<http2.ServerHttp2Session> }> {
    const server = await startScriptedHttp2Server(mesh, SERVER_ID, onStream)
    closers.push(() => server.close())
    return { via: loopback(server.port), sessions: server.sessions }
  }

  it('sends a CONNECT the server refused unprocessed (REFUSED_STREAM) once more, and the tunnel works', async () => {
    const server = await nodeServer((stream, index) => (index === 0 ? stream.close(http2.constants.NGHTTP2_REFUSED_STREAM) : echoStream(stream)))
    const h = await harness()
    const { app, accepted } = await h.app()
    const tunnel = await h.client.open(accepted, loopback(echo.port), { identity: CLIENT_ID, expectedIdentities: [SERVER_ID], via: server.via })
    app.end('after a refusal')
    expect((await readAll(app)).toString()).toBe('after a refusal')
    expect((await endOf(tunnel)).outcome).toBe('closed')
  })

  it('sends a CONNECT above the last stream of a GOAWAY on a new session (RFC 9113 §6.8)', async () => {
    // The first CONNECT is served; the second is answered by GOAWAY naming the first as the last
    // processed (Node's server takes the last stream id as given, 0 excepted).
    const server = await nodeServer((stream, index) => (index === 1 ? stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, 1) : echoStream(stream)))
    const h = await harness()
    const first = await h.app()
    await h.client.open(first.accepted, loopback(echo.port), { identity: CLIENT_ID, expectedIdentities: [SERVER_ID], via: server.via })
    const { app, accepted } = await h.app()
    const tunnel = await h.client.open(accepted, loopback(echo.port), { identity: CLIENT_ID, expectedIdentities: [SERVER_ID], via: server.via })
    app.end('on a new session')
    expect((await readAll(app)).toString()).toBe('on a new session')
    expect((await endOf(tunnel)).outcome).toBe('closed')
    expect(server.sessions.size).toBe(2)
    first.app.destroy()
  })

  it('gives up on a CONNECT refused twice, resets the application and keeps no descriptor', async () => {
    const server = await nodeServer((stream) => stream.close(http2.constants.NGHTTP2_REFUSED_STREAM))
    const h = await harness()
    const attempt = async (): Promise<void> => {
      const { app, accepted } = await h.app()
      const appClosed = closed(app)
      await expect(h.client.open(accepted, loopback(echo.port), { identity: CLIENT_ID, expectedIdentities: [SERVER_ID], via: server.via })).rejects.toMatchObject({
        code: 'ERR_AMBIENT_HBONE_STREAM',
        message: expect.stringMatching(/refused twice before any processing/),
      })
      await appClosed
    }
    // The first attempt also opens the session, which stays pooled: the second leaves nothing.
    await attempt()
    const before = openFds()
    await attempt()
    await waitFor(() => openFds() <= before)
  })

  it('sends GOAWAY with the last stream it processed before a session it destroys goes', async () => {
    const h = await harness()
    // A first tunnel, served: the server processed stream 1.
    const { tunnel } = await h.open(loopback(echo.port))
    await tunnel
    const tls = await mesh.clientTls(CLIENT_ID)(CLIENT_ID, { expectedIdentities: [SERVER_ID], signal: new AbortController().signal })
    const session = http2.connect(`https://127.0.0.1:${h.via.port}`, { ...tls, ALPNProtocols: ['h2'] })
    session.on('error', () => {})
    const goaway = new Promise<{ code: number; last: number }>((resolve) => session.once('goaway', (code, last) => resolve({ code, last })))
    const request = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` })
    request.on('error', () => {})
    await once(request, 'response')
    void h.server.close()
    expect(await goaway).toEqual({ code: http2.constants.NGHTTP2_NO_ERROR, last: 1 })
    session.destroy()
  })

  /** A TLS server with ALPN h2 that sends `greeting` (raw HTTP/2 frames) and then nothing: no PING answers, no response. */
  async function silentServer(greeting: Buffer): Promise<SocketAddress> {
    const options = await mesh.serverTls(SERVER_ID)
    const silent = createTlsServer({ ...options, ALPNProtocols: ['h2'] }, (socket: TLSSocket) => {
      socket.on('error', () => {})
      socket.write(greeting)
    })
    silent.listen(0, '127.0.0.1')
    await once(silent, 'listening')
    const sockets = new Set<TLSSocket>()
    silent.on('secureConnection', (socket: TLSSocket) => sockets.add(socket))
    closers.push(() => new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy()
      silent.close(() => resolve())
    }))
    return loopback((silent.address() as AddressInfo).port)
  }

  // An empty SETTINGS frame (RFC 9113 §6.5): length 0, type 4, no flags, stream 0.
  const EMPTY_SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])

  it('destroys a session whose PINGs go unanswered, failing what waits on it', async () => {
    const via = await silentServer(EMPTY_SETTINGS)
    const h = await harness({}, { keepaliveInterval: 20, keepaliveTimeout: 100 })
    const { accepted } = await h.app()
    const opening = h.client.open(accepted, loopback(echo.port), { identity: CLIENT_ID, expectedIdentities: [SERVER_ID], via })
    await expect(opening).rejects.toMatchObject({ code: 'ERR_AMBIENT_HBONE_STREAM', message: expect.stringMatching(/keepalive/) })
    expect(h.client.stats()).toEqual([])
  })

  it('fails the open of a session whose server never sends SETTINGS within sessionTimeout, as the Node client does', async () => {
    const via = await silentServer(Buffer.alloc(0))
    const h = await harness({}, { sessionTimeout: 200 })
    const { accepted } = await h.app()
    const opening = h.client.open(accepted, loopback(echo.port), { identity: CLIENT_ID, expectedIdentities: [SERVER_ID], via })
    await expect(opening).rejects.toMatchObject({ code: 'ERR_AMBIENT_HBONE_CONNECT_FAILED' })
    expect(h.client.stats()).toEqual([])
  })

  it('leaves no descriptor behind after close', async () => {
    const before = openFds()
    const h = await harness()
    const opens = await Promise.all([0, 1, 2].map(() => h.open(loopback(echo.port))))
    await Promise.all(opens.map((o) => o.tunnel))
    const appsClosed = opens.map(({ app }) => closed(app))
    await h.client.close()
    await h.server.close()
    // The client's close reset the applications' connections.
    await Promise.all(appsClosed)
    for (const close of closers.splice(0).reverse()) await close()
    for (const socket of echo.sockets) socket.destroy()
    const deadline = Date.now() + 5000
    while (openFds() > before && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    expect(openFds()).toBe(before)
  })
})
