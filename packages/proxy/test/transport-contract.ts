import { once } from 'node:events'
import { readdirSync } from 'node:fs'
import http2 from 'node:http2'
import { Socket, connect as netConnect, type AddressInfo } from 'node:net'
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from 'node:tls'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { isAmbientError, type SocketAddress } from '@ambientkit/core'
import type {
  HboneDecision,
  HboneHandshakeFailure,
  HboneRequest,
  HboneTransport,
  HboneTunnel,
  HboneTunnelRecord,
  OpenOptions,
  TransportClient,
  TransportClientOptions,
  TransportServer,
  TransportServerOptions,
  TunnelResult,
} from '@ambientkit/proxy'
import { boundAddress } from '@ambientkit/redirect'
import { createCertificateAuthority, createIdentityManager, createLocalCaSource } from '@ambientkit/identity'
import { craft } from '../../identity/test/craft'
import { closedWith } from './support/apps'
import { appConnections, listenDescriptors, sockets } from './support/descriptors'
import { closed, createTestMesh, echoStream, readAll, startEchoServer, startScriptedHttp2Server, type TestMesh } from './interop/support'

/**
 * The contract suite every HBONE transport passes (as js-libp2p's
 * interface compliance tests): the same behaviours, checked the same way,
 * against each implementation. A transport is added by implementing
 * `HboneTransport` and running this suite against it; the workload proxy
 * needs no change. Sockets are descriptors from `ownNetnsSockets()`, as
 * the workload proxy hands them over from inside a pod.
 *
 * `wire: false` marks a transport with no wire between client and server
 * (in-process): what only exists on a wire (sessions, handshakes, HTTP/2
 * frames) is skipped for it, each skip saying why.
 */
export interface TransportUnderTest {
  readonly name: string
  readonly transport: () => HboneTransport
  readonly wire: boolean
  /** Behaviours this transport does not have yet, by test name, each with why: skipped with the reason printed. */
  readonly gaps?: Readonly<Record<string, string>>
}

export const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/api'
export const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/frontend'
export const OTHER_ID = 'spiffe://cluster.local/ns/shop/sa/admin'

const openFds = (): number => readdirSync('/proc/self/fd').length

/** What a test holds of one server and client pair. */
export interface Pair {
  readonly server: TransportServer
  readonly client: TransportClient
  /** Where the server is reached. */
  readonly via: SocketAddress
  readonly records: HboneTunnelRecord[]
  readonly requests: HboneRequest[]
  readonly failures: HboneHandshakeFailure[]
  /** Resolves with the next finished tunnel record. */
  nextRecord(): Promise<HboneTunnelRecord>
  /** A fresh application connection: `app` is what the application holds, `accepted` the proxy's end (a descriptor). */
  app(): Promise<{ app: Socket; accepted: number }>
  /** Opens a tunnel to `destination` for a fresh application connection. */
  open(destination: SocketAddress, options?: Partial<OpenOptions>): Promise<{ app: Socket; tunnel: Promise<HboneTunnel> }>
}

export function describeTransportContract(subject: TransportUnderTest): void {
  const gap = (name: string): string | undefined => subject.gaps?.[name]
  const onWire = (name: string, test: () => Promise<void>): void => {
    const reason = gap(name)
    if (reason !== undefined) console.warn(`[skip] ${subject.name}: ${name}: ${reason}`)
    // What only exists on a wire (sessions, handshakes, frames) is not a behaviour of an in-process transport.
    ;(subject.wire && reason === undefined ? it : it.skip)(name, test)
  }
  /** A behaviour every transport has, unless its gaps say why not yet. */
  const unlessGap = (name: string, test: () => Promise<void>): void => {
    const reason = gap(name)
    if (reason !== undefined) console.warn(`[skip] ${subject.name}: ${name}: ${reason}`)
    ;(reason === undefined ? it : it.skip)(name, test)
  }
  const loopback = (port: number): SocketAddress => ({ address: '127.0.0.1', port, family: 4 })

  describe(`HBONE transport contract: ${subject.name}`, () => {
    let mesh: TestMesh
    let echo: Awaited<ReturnType<typeof startEchoServer>>
    const closers: Array<() => Promise<void> | void> = []

    beforeAll(async () => {
      mesh = await createTestMesh()
      echo = await startEchoServer()
    })
    afterAll(async () => {
      await echo?.close()
      await mesh?.close()
    })
    afterEach(async () => {
      for (const close of closers.splice(0).reverse()) await close()
    })

    /** A listener in this namespace whose connections go to `onFd` as descriptors. */
    function listen(onFd: (fd: number, remote: SocketAddress) => void): SocketAddress {
      const listener = listenDescriptors(onFd)
      closers.push(() => listener.close())
      return listener.address
    }

    async function pair(server: Partial<TransportServerOptions> = {}, client: Partial<TransportClientOptions> = {}, transport = subject.transport()): Promise<Pair> {
      const records: HboneTunnelRecord[] = []
      const requests: HboneRequest[] = []
      const failures: HboneHandshakeFailure[] = []
      const waiters: Array<(record: HboneTunnelRecord) => void> = []
      const unread: HboneTunnelRecord[] = []
      const listening = sockets.listenFd({ host: '127.0.0.1', port: 0 })
      const via = boundAddress(listening)
      const hbone = await transport.createServer({
        identities: mesh.manager,
        identity: SERVER_ID,
        // An in-process transport finds the server by its address; on a wire, none is served in-process.
        addresses: subject.wire ? [] : [via.address],
        decide: (request): HboneDecision => {
          requests.push(request)
          return { action: 'serve' }
        },
        connect: (destination, { signal }) => sockets.connectFd({ host: destination.address, port: destination.port, signal }),
        onTunnel: (record) => {
          records.push(record)
          const waiter = waiters.shift()
          if (waiter === undefined) unread.push(record)
          else waiter(record)
        },
        onHandshakeFailure: (failure) => failures.push(failure),
        ...server,
      })
      const acceptor = sockets.accept(listening, ({ fd, remote }) => hbone.handle(fd, remote))
      const tunnels = transport.createClient({
        identities: mesh.manager,
        connectSession: (address, { signal }) => sockets.connectFd({ host: address.address, port: address.port, signal }),
        ...client,
      })
      // What the workload proxy's outbound listener hands over: the accepted end, as a descriptor.
      const apps = appConnections()
      closers.push(
        () => apps.close(),
        () => acceptor.close(),
        () => hbone.close(),
        () => tunnels.close(),
      )
      const app = apps.app
      return {
        server: hbone,
        client: tunnels,
        via,
        records,
        requests,
        failures,
        nextRecord: () => (unread.length > 0 ? Promise.resolve(unread.shift()!) : new Promise((resolve) => waiters.push(resolve))),
        app,
        async open(destination, options = {}) {
          const { app: socket, accepted: fd } = await app()
          const tunnel = tunnels.open(fd, destination, {
            identity: CLIENT_ID,
            expectedIdentities: [SERVER_ID],
            via,
            headers: { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' },
            ...options,
          })
          // A test that expects a rejection awaits it; none may go unhandled meanwhile.
          tunnel.catch(() => {})
          return { app: socket, tunnel }
        },
      }
    }

    const endOf = (tunnel: HboneTunnel): Promise<TunnelResult> => new Promise((resolve) => tunnel.onClose(resolve))
    const codeOf = async (promise: Promise<unknown>): Promise<unknown> => {
      try {
        await promise
      } catch (err) {
        return isAmbientError(err) ? { code: err.code, status: err.details.status } : err
      }
      throw new Error('expected a rejection')
    }

    it('tunnels bytes both ways, with both identities verified and one record of the tunnel', async () => {
      const p = await pair()
      const { app, tunnel } = await p.open(loopback(echo.port))
      const opened = await tunnel
      expect(opened.protocol).toBe(subject.wire ? 'HBONE' : 'local')
      app.end('hello through the tunnel')
      expect((await readAll(app)).toString()).toBe('hello through the tunnel')
      const [record, result] = await Promise.all([p.nextRecord(), endOf(opened)])
      expect(p.requests[0]).toMatchObject({ peerIdentity: CLIENT_ID, destination: loopback(echo.port), traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' })
      expect(record).toMatchObject({ status: 200, outcome: 'closed', peerIdentity: CLIENT_ID, bytesReceived: 24, bytesSent: 24, protocol: opened.protocol })
      expect(result).toMatchObject({ outcome: 'closed', socketBytesRead: 24, socketBytesWritten: 24 })
    })

    /** An upstream in this namespace: resolves with each connection it accepts, as a half-open socket. */
    function upstreamServer(): { address: SocketAddress; next(): Promise<Socket> } {
      const pending: Array<(socket: Socket) => void> = []
      const ready: Socket[] = []
      const address = listen((fd) => {
        const socket = new Socket({ fd, readable: true, writable: true, allowHalfOpen: true })
        socket.on('error', () => {})
        closers.push(() => void socket.destroy())
        const waiting = pending.shift()
        if (waiting === undefined) ready.push(socket)
        else waiting(socket)
      })
      return { address, next: () => (ready.length > 0 ? Promise.resolve(ready.shift()!) : new Promise((resolve) => pending.push(resolve))) }
    }

    it('keeps half-close both ways: the app FIN reaches upstream, which can still answer', async () => {
      const upstream = upstreamServer()
      const p = await pair()
      const { app, tunnel } = await p.open(upstream.address)
      await tunnel
      const peer = await upstream.next()
      app.end('request')
      expect((await readAll(peer)).toString()).toBe('request')
      peer.end('late answer')
      expect((await readAll(app)).toString()).toBe('late answer')
    })

    it('keeps half-close both ways: the upstream FIN reaches the app, which can still send', async () => {
      const upstream = upstreamServer()
      const p = await pair()
      const { app, tunnel } = await p.open(upstream.address)
      await tunnel
      const peer = await upstream.next()
      peer.end('early answer')
      expect((await readAll(app)).toString()).toBe('early answer')
      app.end('then the request')
      expect((await readAll(peer)).toString()).toBe('then the request')
    })

    it('propagates an app reset to the upstream as a reset, and an upstream reset back to the app', async () => {
      const upstream = upstreamServer()
      const p = await pair()
      const first = await p.open(upstream.address)
      const opened = await first.tunnel
      const peer = await upstream.next()
      const peerError = new Promise<NodeJS.ErrnoException>((resolve) => peer.once('error', resolve))
      first.app.resetAndDestroy()
      expect((await peerError).code).toBe('ECONNRESET')
      expect((await endOf(opened)).outcome).toBe('socket-reset')

      const second = await p.open(upstream.address)
      await second.tunnel
      const peer2 = await upstream.next()
      const appError = new Promise<NodeJS.ErrnoException>((resolve) => second.app.once('error', resolve))
      peer2.resetAndDestroy()
      expect((await appError).code).toBe('ECONNRESET')
    })

    it('resets both ends when the proxy resets an established tunnel (a policy that now denies it)', async () => {
      const upstream = upstreamServer()
      const p = await pair()
      const { app, tunnel } = await p.open(upstream.address)
      const opened = await tunnel
      const peer = await upstream.next()
      const appError = new Promise<NodeJS.ErrnoException>((resolve) => app.once('error', resolve))
      const peerError = new Promise<NodeJS.ErrnoException>((resolve) => peer.once('error', resolve))
      opened.reset()
      expect((await appError).code).toBe('ECONNRESET')
      expect((await peerError).code).toBe('ECONNRESET')
      expect((await endOf(opened)).outcome).not.toBe('closed')
    })

    it('serves the upstream through the connector only once decided, answering 200 only once it is connected', async () => {
      let release!: () => void
      const gate = new Promise<void>((resolve) => (release = resolve))
      const p = await pair({
        connect: async (destination, { signal }) => {
          await gate
          return sockets.connectFd({ host: destination.address, port: destination.port, signal })
        },
      })
      const { app, tunnel } = await p.open(loopback(echo.port))
      let answered = false
      void tunnel.then(() => (answered = true))
      await new Promise((resolve) => setImmediate(resolve))
      expect(answered).toBe(false)
      release()
      await tunnel
      app.end('ok')
      expect((await readAll(app)).toString()).toBe('ok')
    })

    it('answers a denied CONNECT with 401, which fails the open with its status and resets the app', async () => {
      const p = await pair({ decide: () => ({ action: 'deny', reason: 'no', policy: 'shop/deny-all' }) })
      const { app, tunnel } = await p.open(loopback(echo.port))
      expect(await codeOf(tunnel)).toEqual({ code: 'ERR_AMBIENT_HBONE_STATUS', status: 401 })
      await closed(app)
      expect(await p.nextRecord()).toMatchObject({ status: 401, outcome: 'rejected', policy: 'shop/deny-all' })
    })

    it.each([
      [{ action: 'not-served', reason: 'x' } as HboneDecision, 400],
      [{ action: 'unknown', reason: 'x' } as HboneDecision, 503],
    ])('answers %j with %i', async (decision, status) => {
      const p = await pair({ decide: () => decision })
      const { tunnel } = await p.open(loopback(echo.port))
      expect(await codeOf(tunnel)).toEqual({ code: 'ERR_AMBIENT_HBONE_STATUS', status })
    })

    it('answers 500 when decide throws and 503 when the upstream connect fails', async () => {
      const throwing = await pair({
        decide: () => {
          throw new Error('bug')
        },
      })
      expect(await codeOf((await throwing.open(loopback(echo.port))).tunnel)).toEqual({ code: 'ERR_AMBIENT_HBONE_STATUS', status: 500 })
      const refusing = await pair()
      const nothing = upstreamServer().address
      await sockets.connectFd({ host: nothing.address, port: nothing.port }).then((fd) => new Socket({ fd }).destroy())
      expect(await codeOf((await refusing.open({ ...nothing, port: 1 })).tunnel)).toEqual({ code: 'ERR_AMBIENT_HBONE_STATUS', status: 503 })
      expect(await refusing.nextRecord()).toMatchObject({ status: 503, reason: 'upstream-connect-failed' })
    })

    it('fails the open with IDENTITY_MISMATCH when the server is not an expected identity, resetting the app and pooling nothing', async () => {
      const p = await pair()
      const { app, tunnel } = await p.open(loopback(echo.port), { expectedIdentities: [OTHER_ID] })
      expect(await codeOf(tunnel)).toMatchObject({ code: 'ERR_AMBIENT_HBONE_IDENTITY_MISMATCH' })
      await closed(app)
      expect(p.client.stats()).toEqual([])
    })

    it('passes baggage and traceparent, and believes forwarded only from a trusted peer', async () => {
      const trusting = await pair({ trustForwarded: (id) => id === CLIENT_ID })
      await (await trusting.open(loopback(echo.port), { headers: { forwarded: 'for=192.0.2.60', baggage: 'k=v' } })).tunnel
      expect(trusting.requests[0]).toMatchObject({ forwardedFor: '192.0.2.60', baggage: 'k=v' })
      const wary = await pair()
      await (await wary.open(loopback(echo.port), { headers: { forwarded: 'for=192.0.2.60' } })).tunnel
      expect(wary.requests[0]!.forwardedFor).toBeUndefined()
      expect(wary.requests[0]!.headers.forwarded).toBeUndefined()
    })

    it('aborting an open before the answer rejects it, resets the app and frees its slot', async () => {
      // An upstream that never connects: the server gives up only when the stream goes away.
      const p = await pair({ connect: (_destination, { signal }) => new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error))) })
      const controller = new AbortController()
      const { app, tunnel } = await p.open(loopback(echo.port), { signal: controller.signal })
      await expect.poll(() => p.requests.length).toBe(1)
      controller.abort()
      expect(await codeOf(tunnel)).toMatchObject({ code: 'ERR_AMBIENT_ABORTED' })
      await closed(app)
      expect(await p.nextRecord()).toMatchObject({ outcome: 'cancelled', status: 0 })
      await expect.poll(() => p.client.stats().every((session) => session.streams === 0)).toBe(true)
    })

    it('stops reading the app while the destination does not read, and loses nothing', async () => {
      const upstream = upstreamServer()
      const p = await pair()
      const { app, tunnel } = await p.open(upstream.address)
      await tunnel
      const peer = await upstream.next()
      peer.pause()
      const chunk = Buffer.alloc(64 * 1024, 7)
      let written = 0
      // Far more than every buffer and window on the way can hold: the app must be told to wait.
      for (let i = 0; i < 1024 && app.write(chunk); i++) written += chunk.length
      expect(written).toBeLessThan(64 * 1024 * 1024)
      app.end()
      peer.resume()
      let received = 0
      for await (const data of peer) received += (data as Buffer).length
      expect(received).toBe(written + chunk.length)
    })

    it('drain lets an open tunnel finish and closes; new tunnels are refused meanwhile', async () => {
      const upstream = upstreamServer()
      const p = await pair()
      const { app, tunnel } = await p.open(upstream.address)
      const opened = await tunnel
      const peer = await upstream.next()
      const drained = p.server.drain()
      let done = false
      void drained.then(() => (done = true))
      const late = await p.app()
      p.server.handle(late.accepted)
      await new Promise((resolve) => setTimeout(resolve, 50))
      expect(done).toBe(false)
      app.end('bye')
      expect((await readAll(peer)).toString()).toBe('bye')
      peer.end()
      await endOf(opened)
      await drained
    })

    it('closing the server resets open tunnels, and their apps', async () => {
      const upstream = upstreamServer()
      const p = await pair()
      const { app, tunnel } = await p.open(upstream.address)
      const opened = await tunnel
      await upstream.next()
      const appClosed = closed(app)
      await p.server.close()
      await appClosed
      expect((await endOf(opened)).outcome).toBe('stream-reset')
    })

    it('leaves no descriptor behind once everything is closed', async () => {
      const before = openFds()
      const p = await pair()
      for (let i = 0; i < 5; i++) {
        const { app, tunnel } = await p.open(loopback(echo.port))
        await tunnel
        app.end('x')
        await readAll(app)
        app.destroy()
      }
      await p.client.close()
      await p.server.close()
      for (const close of closers.splice(0).reverse()) await close()
      await expect.poll(() => openFds(), { timeout: 5000 }).toBeLessThanOrEqual(before)
    })

    onWire('shares one session between tunnels up to maxStreamsPerSession, then opens another', async () => {
      const p = await pair({}, { maxStreamsPerSession: 2 })
      const tunnels = await Promise.all([0, 1, 2].map(async () => (await p.open(loopback(echo.port))).tunnel))
      expect(tunnels).toHaveLength(3)
      expect(p.client.stats().map((session) => session.streams).sort()).toEqual([1, 2])
    })

    onWire("honours the server's SETTINGS_MAX_CONCURRENT_STREAMS", async () => {
      const p = await pair({ maxConcurrentStreams: 1 })
      await (await p.open(loopback(echo.port))).tunnel
      await (await p.open(loopback(echo.port))).tunnel
      expect(p.client.stats().map((session) => session.streams)).toEqual([1, 1])
    })

    onWire('refuses a client of another trust domain at the handshake, and reports it', async () => {
      const other = await createTestMesh('other.example')
      closers.push(() => other.close())
      const p = await pair()
      const stranger = subject.transport().createClient({
        identities: other.manager,
        connectSession: (address, { signal }) => sockets.connectFd({ host: address.address, port: address.port, signal }),
      })
      closers.push(() => stranger.close())
      const { accepted } = await p.app()
      const opening = stranger.open(accepted, loopback(echo.port), { identity: 'spiffe://other.example/ns/a/sa/b', expectedIdentities: [SERVER_ID], via: p.via })
      expect(await codeOf(opening)).toMatchObject({ code: expect.stringMatching(/IDENTITY_MISMATCH|CONNECT_FAILED/) })
      await expect.poll(() => p.failures.length).toBeGreaterThan(0)
      expect(p.failures[0]!.reason).toMatch(/identity|tls/)
    })

    /** A scripted HTTP/2 server of Node's presenting SERVER_ID: the peer a client meets on the wire. */
    async function nodeServer(onStream: (stream: http2.ServerHttp2Stream, index: number) => void): Promise<{ via: SocketAddress; sessions: Set<http2.ServerHttp2Session>; pings(): number }> {
      const server = await startScriptedHttp2Server(mesh, SERVER_ID, onStream)
      let pings = 0
      for (const session of server.sessions) session.on('ping', () => pings++)
      closers.push(() => server.close())
      return { via: loopback(server.port), sessions: server.sessions, pings: () => pings }
    }

    /** Opens a tunnel from a fresh app connection through `p`'s client to `via`. */
    async function openVia(p: Pair, via: SocketAddress): Promise<{ app: Socket; tunnel: Promise<HboneTunnel> }> {
      const { app, accepted } = await p.app()
      const tunnel = p.client.open(accepted, loopback(echo.port), { identity: CLIENT_ID, expectedIdentities: [SERVER_ID], via })
      tunnel.catch(() => {})
      return { app, tunnel }
    }

    onWire('sends a CONNECT the server refused unprocessed (REFUSED_STREAM) once more, and the tunnel works', async () => {
      const server = await nodeServer((stream, index) => (index === 0 ? stream.close(http2.constants.NGHTTP2_REFUSED_STREAM) : echoStream(stream)))
      const { app, tunnel } = await openVia(await pair(), server.via)
      const opened = await tunnel
      app.end('after a refusal')
      expect((await readAll(app)).toString()).toBe('after a refusal')
      expect((await endOf(opened)).outcome).toBe('closed')
    })

    onWire('sends a CONNECT above the last stream of a GOAWAY on a new session (RFC 9113 §6.8)', async () => {
      // The first CONNECT is served; the second is answered by GOAWAY naming the first as the last processed.
      const server = await nodeServer((stream, index) => (index === 1 ? stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, 1) : echoStream(stream)))
      const p = await pair()
      await (await openVia(p, server.via)).tunnel
      const { app, tunnel } = await openVia(p, server.via)
      const opened = await tunnel
      app.end('on a new session')
      expect((await readAll(app)).toString()).toBe('on a new session')
      expect((await endOf(opened)).outcome).toBe('closed')
      expect(server.sessions.size).toBe(2)
    })

    onWire('gives up on a CONNECT refused twice, resets the application and keeps no descriptor', async () => {
      const server = await nodeServer((stream) => stream.close(http2.constants.NGHTTP2_REFUSED_STREAM))
      const p = await pair()
      const attempt = async (): Promise<void> => {
        const { app, tunnel } = await openVia(p, server.via)
        const appClosed = closed(app)
        await expect(tunnel).rejects.toMatchObject({ code: 'ERR_AMBIENT_HBONE_STREAM', message: expect.stringMatching(/refused twice before any processing/) })
        await appClosed
        app.destroy()
      }
      // The first attempt also opens the session, which stays pooled: the second leaves nothing.
      await attempt()
      const before = openFds()
      await attempt()
      await expect.poll(() => openFds(), { timeout: 5000 }).toBeLessThanOrEqual(before)
    })

    onWire('keeps a session alive with PINGs its peer answers', async () => {
      const server = await nodeServer(echoStream)
      const p = await pair({}, { keepaliveInterval: 20, keepaliveTimeout: 100 })
      const { app, tunnel } = await openVia(p, server.via)
      const opened = await tunnel
      for (const session of server.sessions) session.on('ping', () => {})
      // Answered PINGs keep it: well past the timeout, the tunnel still carries bytes.
      await new Promise((resolve) => setTimeout(resolve, 300))
      app.end('still alive')
      expect((await readAll(app)).toString()).toBe('still alive')
      expect((await endOf(opened)).outcome).toBe('closed')
    })

    /** A peer that completes TLS (ALPN h2), writes `greeting`, then never answers anything. */
    async function silentServer(greeting: Buffer): Promise<SocketAddress> {
      const options = await mesh.serverTls(SERVER_ID)
      const silent = createTlsServer({ ...options, ALPNProtocols: ['h2'] }, (socket: TLSSocket) => {
        socket.on('error', () => {})
        socket.write(greeting)
      })
      const held = new Set<TLSSocket>()
      silent.on('secureConnection', (socket: TLSSocket) => held.add(socket))
      silent.listen(0, '127.0.0.1')
      await once(silent, 'listening')
      closers.push(() => new Promise<void>((resolve) => {
        for (const socket of held) socket.destroy()
        silent.close(() => resolve())
      }))
      return loopback((silent.address() as AddressInfo).port)
    }

    // An empty SETTINGS frame (RFC 9113 §6.5): length 0, type 4, no flags, stream 0.
    const EMPTY_SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])

    onWire('destroys a session whose PINGs go unanswered, failing what waits on it and pooling nothing', async () => {
      const via = await silentServer(EMPTY_SETTINGS)
      const p = await pair({}, { keepaliveInterval: 20, keepaliveTimeout: 100 })
      const { tunnel } = await openVia(p, via)
      await expect(tunnel).rejects.toMatchObject({ code: 'ERR_AMBIENT_HBONE_STREAM', message: expect.stringMatching(/keepalive/) })
      expect(p.client.stats()).toEqual([])
    })

    onWire('fails the open of a session whose server never sends SETTINGS within sessionTimeout', async () => {
      const via = await silentServer(Buffer.alloc(0))
      const p = await pair({}, { sessionTimeout: 200 })
      const { tunnel } = await openVia(p, via)
      await expect(tunnel).rejects.toMatchObject({ code: 'ERR_AMBIENT_HBONE_CONNECT_FAILED' })
      expect(p.client.stats()).toEqual([])
    })

    onWire('sends GOAWAY with the last stream it processed when it closes a session', async () => {
      const p = await pair()
      const tls = await mesh.clientTls(CLIENT_ID)(CLIENT_ID, { expectedIdentities: [SERVER_ID], signal: new AbortController().signal })
      const session = http2.connect(`https://127.0.0.1:${p.via.port}`, { ...tls, ALPNProtocols: ['h2'] })
      session.on('error', () => {})
      closers.push(() => void session.destroy())
      const goaway = new Promise<{ code: number; last: number }>((resolve) => session.once('goaway', (code, last) => resolve({ code, last })))
      const request = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` })
      request.on('error', () => {})
      await once(request, 'response')
      void p.server.close()
      expect(await goaway).toEqual({ code: http2.constants.NGHTTP2_NO_ERROR, last: 1 })
    })

    /** A TCP connection to `via` from `source` that never starts TLS. */
    function silentClient(via: SocketAddress, source = '127.0.0.1'): Socket {
      const socket = netConnect({ host: via.address, port: via.port, localAddress: source })
      socket.on('error', () => {})
      closers.push(() => void socket.destroy())
      return socket
    }
    /** Silent clients the server holds, handshaking. */
    async function heldClients(p: Pair, sources: readonly string[]): Promise<void> {
      const before = p.server.stats().connections
      for (const source of sources) silentClient(p.via, source)
      await expect.poll(() => p.server.stats().connections).toBe(before + sources.length)
    }

    // An upgrade: a client's new session reached the old agent just before it drained. Its CONNECT
    // may be served or refused unprocessed (the client sends it again elsewhere), never cut.
    onWire('drain lets a connection still in its TLS handshake finish it: its CONNECT is served or refused unprocessed', async () => {
      const p = await pair()
      const raw = silentClient(p.via)
      await expect.poll(() => p.server.stats().connections).toBe(1)
      const draining = p.server.drain()
      const tls = await mesh.clientTls(CLIENT_ID)(CLIENT_ID, { expectedIdentities: [SERVER_ID], signal: new AbortController().signal })
      const session = http2.connect(`https://127.0.0.1:${p.via.port}`, { ...tls, ALPNProtocols: ['h2'], createConnection: () => tlsConnect({ ...tls, ALPNProtocols: ['h2'], socket: raw }) })
      closers.push(() => void session.destroy())
      const outcome = await new Promise<string>((resolve) => {
        session.on('error', (err: NodeJS.ErrnoException) => resolve(`session error ${err.code ?? err.message}`))
        session.on('close', () => resolve('session closed'))
        const request = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` })
        request.on('response', (headers) => resolve(`status ${headers[':status']}`))
        request.on('error', () => resolve(`stream reset ${request.rstCode}`))
        request.on('close', () => resolve(`stream closed ${request.rstCode}`))
      })
      expect(outcome).toMatch(new RegExp(`^(status 200|stream (reset|closed) ${http2.constants.NGHTTP2_REFUSED_STREAM})$`))
      session.destroy()
      await draining
    })

    onWire('closes a connection that never starts TLS at handshakeTimeout, and reports it', async () => {
      const p = await pair({ handshakeTimeout: 200 })
      await closed(silentClient(p.via))
      await expect.poll(() => p.failures.map((failure) => failure.reason)).toEqual(['timeout'])
      expect(p.failures[0]!.error).toMatchObject({ code: 'ERR_AMBIENT_HBONE_HANDSHAKE_TIMEOUT' })
      await expect.poll(() => p.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 })
    })

    onWire('sheds handshakes above maxPendingHandshakesPerSource at once, while other sources are served', async () => {
      const p = await pair({ maxPendingHandshakesPerSource: 3 })
      await heldClients(p, ['127.0.0.2', '127.0.0.2', '127.0.0.2'])
      await closed(silentClient(p.via, '127.0.0.2'))
      await expect.poll(() => p.failures.length).toBe(1)
      expect(p.failures).toMatchObject([{ reason: 'shed', peerAddress: { address: '127.0.0.2' }, error: { code: 'ERR_AMBIENT_HBONE_SHED' } }])
      // The flooding source is held at its limit; another source's tunnel is served meanwhile.
      const { app, tunnel } = await p.open(loopback(echo.port))
      await tunnel
      app.end('past the flood')
      expect((await readAll(app)).toString()).toBe('past the flood')
    })

    onWire('sheds handshakes above maxPendingHandshakes, whatever their source', async () => {
      const p = await pair({ maxPendingHandshakes: 2 })
      await heldClients(p, ['127.0.0.2', '127.0.0.3'])
      await closed(silentClient(p.via, '127.0.0.4'))
      await expect.poll(() => p.failures.length).toBe(1)
      expect(p.failures).toMatchObject([{ reason: 'shed', peerAddress: { address: '127.0.0.4' } }])
    })

    it('answers 429 to a CONNECT above maxStreamsPerPeer, and serves again once a tunnel closed', async () => {
      const p = await pair({ maxStreamsPerPeer: 2 })
      const held = await Promise.all([0, 1].map(async () => p.open(loopback(echo.port))))
      await Promise.all(held.map(({ tunnel }) => tunnel))
      const over = await p.open(loopback(echo.port))
      expect(await codeOf(over.tunnel)).toEqual({ code: 'ERR_AMBIENT_HBONE_STATUS', status: 429 })
      expect(p.records).toMatchObject([{ status: 429, reason: 'peer-stream-limit' }])
      held[0]!.app.end()
      await readAll(held[0]!.app)
      await p.nextRecord()
      await p.nextRecord()
      const again = await p.open(loopback(echo.port))
      await again.tunnel
      again.app.end('served again')
      expect((await readAll(again.app)).toString()).toBe('served again')
    })

    onWire('closes a session above maxSessionsPerPeer after its handshake, and reports it', async () => {
      const p = await pair({ maxSessionsPerPeer: 1 }, { maxStreamsPerSession: 1 })
      await (await p.open(loopback(echo.port))).tunnel
      const second = await p.open(loopback(echo.port))
      expect(await codeOf(second.tunnel)).toMatchObject({ code: expect.stringMatching(/CONNECT_FAILED|STREAM/) })
      // The client may try a second session; each is refused the same way.
      await expect.poll(() => p.failures.length).toBeGreaterThan(0)
      expect(new Set(p.failures.map((failure) => failure.reason))).toEqual(new Set(['shed']))
      expect(p.server.stats().sessions).toBe(1)
    })

    onWire('sends GOAWAY on a session whose client certificate expired: no new tunnels, the live one finishes', async () => {
      const p = await pair({ expiredSessionDrainTimeout: 60_000 })
      const svid = await craft(mesh.ca, { uris: [CLIENT_ID], notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 1500) })
      const session = http2.connect(`https://127.0.0.1:${p.via.port}`, {
        minVersion: 'TLSv1.3',
        ALPNProtocols: ['h2'],
        key: svid.key.export({ type: 'pkcs8', format: 'pem' }),
        cert: svid.pem,
        ca: mesh.rootsPem,
        checkServerIdentity: () => undefined,
      })
      session.on('error', () => {})
      closers.push(() => void session.destroy())
      const goaway = new Promise<number>((resolve) => session.once('goaway', (code) => resolve(code)))
      const live = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` }, { endStream: false })
      live.on('error', () => {})
      expect((await once(live, 'response'))[0][':status']).toBe(200)
      expect(await goaway).toBe(http2.constants.NGHTTP2_NO_ERROR)
      expect(Date.now()).toBeGreaterThanOrEqual(Date.parse(svid.certificate.validTo))
      // The tunnel opened before the expiry still carries bytes both ways.
      live.end('after the expiry')
      expect((await readAll(live)).toString()).toBe('after the expiry')
      await expect.poll(() => p.server.stats().sessions).toBe(0)
    })

    unlessGap('resets a tunnel that moves no byte for tunnelIdleTimeout, and says so in its record', async () => {
      const upstream = upstreamServer()
      const p = await pair({ tunnelIdleTimeout: 300 })
      const { app, tunnel } = await p.open(upstream.address)
      await tunnel
      await upstream.next()
      expect(await closedWith(app)).toMatchObject({ code: 'ECONNRESET' })
      expect(await p.nextRecord()).toMatchObject({ status: 200, outcome: 'stream-reset', error: { code: 'ERR_AMBIENT_HBONE_TUNNEL_TIMEOUT' } })
    })

    unlessGap('resets a tunnel whose destination stops reading, after tunnelStallTimeout', async () => {
      const upstream = upstreamServer()
      const p = await pair({ tunnelStallTimeout: 300 })
      const { app, tunnel } = await p.open(upstream.address)
      await tunnel
      const peer = await upstream.next()
      peer.pause()
      const reset = closedWith(app)
      // Far more than every buffer and window on the way holds: the server's side waits on the destination.
      app.write(Buffer.alloc(32 * 1024 * 1024, 7))
      expect(await reset).toMatchObject({ code: 'ECONNRESET' })
      expect(await p.nextRecord()).toMatchObject({ status: 200, outcome: 'stream-reset', error: { code: 'ERR_AMBIENT_HBONE_TUNNEL_TIMEOUT', message: expect.stringMatching(/tunnelStallTimeout/) } })
    })

    onWire('stops using a pooled session once its local certificate expired, and opens a new one with the renewed SVID', async () => {
      // A server of Node's that ends no session itself: what ends the first one is the client's pool.
      const server = await nodeServer(echoStream)
      const shortLived = createIdentityManager({ source: createLocalCaSource(mesh.ca), ttlSeconds: 2 })
      closers.push(() => shortLived.close())
      const p = await pair({}, { identities: shortLived })
      const first = await openVia(p, server.via)
      await first.tunnel
      const expiry = (await shortLived.get(CLIENT_ID)).notAfter.getTime()
      expect(p.client.stats()).toHaveLength(1)
      // Retired at the expiry (GOAWAY, then closed once its tunnel ended): the pool holds nothing.
      first.app.end()
      await expect.poll(() => p.client.stats(), { timeout: 10_000, interval: 100 }).toEqual([])
      expect(Date.now()).toBeGreaterThanOrEqual(expiry)
      const second = await openVia(p, server.via)
      await second.tunnel
      second.app.end('on a new session')
      expect((await readAll(second.app)).toString()).toBe('on a new session')
      expect(server.sessions.size).toBe(2)
    })

    onWire('refuses a client whose SVID chains to a trusted root of another trust domain (the SPIFFE check OpenSSL does not make)', async () => {
      const local = await createTestMesh()
      closers.push(() => local.close())
      const otherCa = await createCertificateAuthority({ trustDomain: 'other.org' })
      local.manager.bundles.set(otherCa.bundle)
      const p = await pair({ identities: local.manager })
      // cluster.local's CA signs an other.org ID: OpenSSL accepts the chain, SPIFFE does not.
      const crossed = await craft(local.ca, { uris: ['spiffe://other.org/w'] })
      const socket = tlsConnect({
        host: '127.0.0.1',
        port: p.via.port,
        minVersion: 'TLSv1.3',
        ALPNProtocols: ['h2'],
        key: crossed.key.export({ type: 'pkcs8', format: 'pem' }),
        cert: crossed.pem,
        ca: local.rootsPem,
        checkServerIdentity: () => undefined,
      })
      socket.on('error', () => {})
      await closed(socket)
      await expect.poll(() => p.failures.length).toBe(1)
      expect(p.failures[0]).toMatchObject({ reason: 'identity', error: expect.objectContaining({ code: 'ERR_AMBIENT_SVID_REJECTED' }) })
      await expect.poll(() => p.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 })
    })
  })
}
