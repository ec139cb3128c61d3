import { connectTcp } from './connect'
import {
  constants as h2,
  createSecureServer,
  type Http2SecureServer,
  type Http2Session,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import {
  AmbientError,
  CoreErrorCode,
  abortError,
  invalidArgument,
  parseSocketAddress,
  throwIfAborted,
  tryCanonicalIp,
  type AbortOptions,
  type SocketAddress,
} from '@ambientkit/core'
import { IdentityErrorCode, attachTlsServer, peerSpiffeId, type SpiffeTlsServerOptions, type TlsServerBinding } from '@ambientkit/identity'
import type {
  CarriedConnection,
  HboneHandshakeFailure,
  HboneServerStats,
  TransportServer,
  TransportServerOptions,
  TunnelResult,
  UpstreamConnector,
} from '../transport/contract'
import { asSocket, resetConnection } from '../transport/connection'
import type { PendingHandshake } from '../transport/limits'
import { report, requestConfig, serveRequest, type RequestConfig, type RequestStream, type SessionPeer } from '../transport/request'
import type { HboneWindows } from './constants'
import { certificatesValidUntil } from './client'
import { HboneErrorCode } from './errors'
import { localSettings, positiveInteger, resolveWindows, sessionMemoryFor } from './settings'
import { resetTunnel, startTunnelSplice, type TunnelTimeouts } from './splice'

/** Options of {@link createHboneServer}: a transport server's, with TLS given as options rather than an identity manager. */
export interface HboneServerOptions extends Omit<TransportServerOptions, 'identities' | 'identity' | 'addresses' | 'connect'> {
  /**
   * The object returned by `@ambientkit/identity`'s `tlsServerOptions()`:
   * it presents this workload's SVID, and the server attaches it
   * (`attachTlsServer`) so every client SVID is verified against the bundle
   * of its own trust domain (local or federated) and rotated SVIDs are
   * picked up. The server enforces on top: TLS 1.3 only, ALPN `h2`, a client
   * certificate required.
   */
  readonly tls: SpiffeTlsServerOptions
  /** Opens upstream connections (a socket or a descriptor). Default: `net.connect` to the destination, half-open allowed. */
  readonly connect?: UpstreamConnector
}

/** An HBONE server: mTLS HTTP/2 `CONNECT` termination. */
export interface HboneServer extends TransportServer {
  /**
   * Serves an accepted TCP connection: a socket, or a descriptor (from
   * `NetnsSockets.accept`, for a listener inside a pod's network namespace).
   */
  handle(connection: CarriedConnection, remote?: SocketAddress): void
  /** Convenience: listens on its own TCP socket. Resolves with the bound address. */
  listen(port: number, host?: string, options?: AbortOptions): Promise<SocketAddress>
  /** The address {@link listen} bound, if listening. */
  address(): SocketAddress | undefined
}

/**
 * Creates an HBONE server on Node's `tls` and `http2`: it terminates mutual
 * TLS (TLS 1.3, ALPN `h2`, client certificate required), accepts HTTP/2
 * `CONNECT` requests whose `:authority` is `ip:port` or `[ipv6]:port`, asks
 * `decide` what to do, connects upstream, and answers 200 only once that
 * connect succeeded (the state machine every transport shares; see
 * {@link HboneTransport}). {@link createNodeTransport} builds its servers
 * with it.
 *
 * Status codes: not `CONNECT` → 400; missing or malformed `:authority` →
 * 400; not served here → 400; unknown destination → 503; denied → 401;
 * upstream connect failed or timed out → 503; `decide` threw → 500.
 *
 * @example
 * ```ts
 * import { createCertificateAuthority, createIdentityManager, createLocalCaSource, tlsServerOptions } from '@ambientkit/identity'
 * import { createHboneServer } from '@ambientkit/proxy'
 *
 * const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
 * const manager = createIdentityManager({ source: createLocalCaSource(ca) })
 * const server = createHboneServer({
 *   tls: await tlsServerOptions({ manager, id: 'spiffe://cluster.local/ns/shop/sa/api', alpnProtocols: ['h2'] }),
 *   decide: ({ destination }) => (destination.port === 8080 ? { action: 'serve' } : { action: 'not-served', reason: 'port' }),
 * })
 * await server.listen(15008, '127.0.0.1')
 * ```
 */
export function createHboneServer(options: HboneServerOptions): HboneServer {
  if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
  if (typeof options.tls !== 'object' || options.tls === null) throw invalidArgument('tls', options.tls, 'TLS server options')
  if (typeof options.decide !== 'function') throw invalidArgument('decide', options.decide, 'a function')
  return new HboneServerImpl(options)
}

class HboneServerImpl implements HboneServer {
  readonly #config: RequestConfig
  readonly #tls: Http2SecureServer
  readonly #sockets = new Set<Socket>()
  readonly #sessions = new Set<ServerHttp2Session>()
  readonly #peers = new WeakMap<Http2Session, SessionPeer>()
  readonly #streams = new Set<ServerHttp2Stream>()
  /** Connections still handshaking, by {@link connectionKey} (the TLS socket's and its TCP socket's are the same). */
  readonly #handshaking = new Map<string, PendingHandshake>()
  /** Connections {@link handle} admitted, until the TLS server's 'connection' tracks them. */
  readonly #admitted = new WeakMap<Socket, PendingHandshake>()
  /** `close` listener of every stream (the stream is `this`): one function per server rather than a closure per tunnel. */
  readonly #forgetStream: (this: ServerHttp2Stream) => void
  readonly #closing = new AbortController()
  readonly #binding: TlsServerBinding
  #listening = false
  #draining: Promise<void> | undefined
  #closed: Promise<void> | undefined

  constructor(options: HboneServerOptions) {
    const streams = this.#streams
    this.#forgetStream = function () {
      streams.delete(this)
    }
    const windows = resolveWindows(options.windows, 'windows')
    const maxConcurrentStreams = positiveInteger(options.maxConcurrentStreams, 'maxConcurrentStreams', 1000, 2 ** 31 - 1)
    this.#config = requestConfig({ ...options, connect: options.connect ?? defaultConnector }, 'HBONE', this.#closing.signal, resetConnection)
    this.#tls = createSecureServer({
      ...options.tls,
      // HBONE is mutual TLS 1.3 over h2 only (Istio's HBONE spec).
      minVersion: 'TLSv1.3',
      ALPNProtocols: ['h2'],
      requestCert: true,
      rejectUnauthorized: true,
      allowHTTP1: false,
      settings: localSettings(windows, maxConcurrentStreams),
      maxSessionMemory: sessionMemoryFor(windows),
    })
    // Before any other listener: identity verifies each client SVID ahead of http2's session setup.
    this.#binding = attachTlsServer(this.#tls, options.tls)
    this.#tls.on('connection', (socket: Socket) => this.#track(socket))
    this.#tls.on('secureConnection', (socket: TLSSocket) => {
      const key = connectionKey(socket)
      this.#handshaking.get(key)?.settle()
      this.#handshaking.delete(key)
    })
    this.#tls.on('tlsClientError', (error: Error, socket: TLSSocket) => {
      this.#handshakeFailure(socket, handshakeFailureReason(error), error)
    })
    this.#tls.on('unknownProtocol', (socket: TLSSocket) => {
      this.#handshakeFailure(socket, 'alpn', new AmbientError(HboneErrorCode.Alpn, 'client did not negotiate ALPN h2'))
      socket.destroy()
    })
    this.#tls.on('session', (session: ServerHttp2Session) => this.#onSession(session, windows))
    this.#tls.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => this.#onStream(stream, headers))
  }

  handle(connection: CarriedConnection, remote?: SocketAddress): void {
    if (this.#closed !== undefined || this.#draining !== undefined) {
      asSocket(connection, false).destroy()
      return
    }
    // Admitted before a TLS socket (an OpenSSL object) exists: a flood is shed for the price of a close.
    const held: { socket?: Socket } = {}
    const peer = remote ?? (typeof connection === 'number' ? undefined : remoteOf(connection))
    // The TLS socket reports the error a connection is destroyed with to 'tlsClientError', as any other failed handshake.
    const admitted = this.#config.limits.admit(peer, (error) => held.socket?.destroy(error))
    if (!('settle' in admitted)) {
      this.#reportFailure(peer, admitted.reason, admitted.error)
      resetConnection(connection)
      return
    }
    const socket = (held.socket = asSocket(connection, false))
    this.#admitted.set(socket, admitted)
    // A session ends with its connection: the client's FIN must not leave it (and its tunnels)
    // half-open. Set before the TLS socket wrapping it is created, which copies the flag.
    socket.allowHalfOpen = false
    // The documented way to feed an externally accepted socket to a TLS server.
    this.#tls.emit('connection', socket)
  }

  async listen(port: number, host?: string, options: AbortOptions = {}): Promise<SocketAddress> {
    throwIfAborted(options.signal, 'HBONE listen')
    if (this.#closed !== undefined) throw new AmbientError(CoreErrorCode.Closed, 'HBONE server is closed')
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw invalidArgument('port', port, 'an integer 0-65535')
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        options.signal?.removeEventListener('abort', onAbort)
        reject(err)
      }
      const onAbort = (): void => {
        this.#tls.off('error', onError)
        this.#tls.close()
        reject(abortError(options.signal!, 'HBONE listen'))
      }
      options.signal?.addEventListener('abort', onAbort, { once: true })
      this.#tls.once('error', onError)
      this.#tls.listen(port, host, () => {
        this.#tls.off('error', onError)
        options.signal?.removeEventListener('abort', onAbort)
        resolve()
      })
    })
    this.#listening = true
    return this.address()!
  }

  address(): SocketAddress | undefined {
    const bound = this.#listening ? this.#tls.address() : null
    if (bound === null || typeof bound === 'string') return undefined
    return parseSocketAddress(bound.family === 'IPv6' ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`)
  }

  stats(): HboneServerStats {
    return { connections: this.#sockets.size, sessions: this.#sessions.size, tunnels: this.#streams.size }
  }

  drain(): Promise<void> {
    this.#draining ??= this.#drain()
    return this.#draining
  }

  async #drain(): Promise<void> {
    const stopped = this.#stopListening()
    const closing = [...this.#sessions].map((session) => new Promise<void>((resolve) => session.once('close', () => resolve())))
    // Node's close() sends GOAWAY, lets the open streams finish, then closes the session.
    for (const session of this.#sessions) session.close()
    await Promise.all([stopped, ...closing])
  }

  close(): Promise<void> {
    this.#closed ??= this.#close()
    return this.#closed
  }

  #stopListening(): Promise<void> {
    if (!this.#listening) return Promise.resolve()
    this.#listening = false
    return new Promise<void>((resolve) => this.#tls.close(() => resolve()))
  }

  async #close(): Promise<void> {
    this.#closing.abort(new AmbientError(CoreErrorCode.Closed, 'HBONE server is closed'))
    this.#binding.close()
    const stopped = this.#stopListening()
    for (const stream of this.#streams) resetTunnel(stream, h2.NGHTTP2_CANCEL)
    const closing = [...this.#sockets].map((socket) => new Promise<void>((resolve) => socket.once('close', () => resolve())))
    for (const session of this.#sessions) session.destroy()
    for (const socket of this.#sockets) socket.destroy()
    await Promise.all([stopped, ...closing])
  }

  #track(socket: Socket): void {
    if (this.#closed !== undefined || this.#draining !== undefined) {
      socket.destroy()
      return
    }
    const key = connectionKey(socket)
    // Handed over (and admitted) by handle, or accepted by listen (admitted here).
    const admitted = this.#admitted.get(socket) ?? this.#config.limits.admit(remoteOf(socket), (error) => socket.destroy(error))
    this.#admitted.delete(socket)
    if (!('settle' in admitted)) {
      socket.destroy(admitted.error)
      return
    }
    this.#handshaking.set(key, admitted)
    this.#sockets.add(socket)
    socket.once('close', () => {
      this.#sockets.delete(socket)
      admitted.settle()
      this.#handshaking.delete(key)
    })
    // Many tunnels share a session: Nagle would hold one tunnel's small frame back until another's ACK.
    socket.setNoDelay(true)
  }

  #handshakeFailure(socket: Socket, reason: HboneHandshakeFailure['reason'], error: Error): void {
    // A connection the limits closed no longer knows its peer: their error does.
    this.#reportFailure(remoteOf(socket) ?? (error as { details?: { peerAddress?: SocketAddress } }).details?.peerAddress, reason, error)
  }

  #reportFailure(peerAddress: SocketAddress | undefined, reason: HboneHandshakeFailure['reason'], error: Error): void {
    this.#config.logger.debug({ peer: peerAddress, reason, err: error }, 'HBONE handshake failed')
    report(this.#config.logger, () => this.#config.onHandshakeFailure({ ...(peerAddress ? { peerAddress } : {}), reason, error }))
  }

  #onSession(session: ServerHttp2Session, windows: HboneWindows): void {
    const socket = session.socket as TLSSocket
    let identity: string
    try {
      identity = peerSpiffeId(socket).toString()
    } catch (err) {
      this.#handshakeFailure(socket, 'identity', err as Error)
      session.destroy()
      return
    }
    const address = remoteOf(socket)
    if (address === undefined) {
      session.destroy()
      return
    }
    const refused = this.#config.limits.openSession(identity)
    if (refused !== undefined) {
      this.#handshakeFailure(socket, refused.reason, refused.error)
      session.destroy()
      return
    }
    // No new tunnels once a certificate of the handshake has expired; live ones may finish within the drain deadline.
    const stopExpiry = this.#config.limits.expireAt(certificatesValidUntil(socket), () => session.close(), () => session.destroy())
    this.#peers.set(session, { identity, address })
    this.#sessions.add(session)
    session.once('close', () => {
      this.#sessions.delete(session)
      this.#config.limits.closeSession(identity)
      stopExpiry()
    })
    // Errors end the session (and its streams); they are reported per tunnel.
    session.on('error', (err) => this.#config.logger.debug({ err, peer: identity }, 'HBONE session error'))
    if (!session.destroyed) session.setLocalWindowSize(windows.connection)
  }

  #onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    const peer = this.#peers.get(stream.session!)
    if (peer === undefined) {
      stream.close(h2.NGHTTP2_REFUSED_STREAM)
      return
    }
    this.#streams.add(stream)
    stream.on('close', this.#forgetStream)
    void serveRequest(this.#config, new NodeRequestStream(stream, this.#config.limits.tunnelTimeouts), peer, {
      method: headers[':method'],
      authority: headers[':authority'],
      headers,
      started: performance.now(),
    })
  }
}

/** A `CONNECT` on a Node HTTP/2 stream, as the shared state machine drives it. */
class NodeRequestStream implements RequestStream {
  constructor(
    readonly stream: ServerHttp2Stream,
    readonly timeouts: TunnelTimeouts,
  ) {
    // An error ends the stream (its 'close' follows); the state machine and the splice hear of it there.
    stream.on('error', ignore)
  }

  get gone(): boolean {
    const stream = this.stream
    return stream.destroyed || stream.closed
  }

  onGone(listener: () => void): () => void {
    this.stream.once('close', listener)
    return () => this.stream.off('close', listener)
  }

  respond(status: number): boolean {
    const stream = this.stream
    if (this.gone || stream.headersSent) return false
    stream.respond({ ':status': status }, { endStream: true })
    // Drain whatever the client still sends so the stream can close.
    stream.resume()
    return true
  }

  carry(upstream: CarriedConnection, done: (result: TunnelResult) => void): boolean {
    const socket = asSocket(upstream, true)
    if (this.gone || this.stream.headersSent) {
      socket.resetAndDestroy()
      return false
    }
    this.stream.respond({ ':status': 200 })
    startTunnelSplice(socket, this.stream, done, this.timeouts)
    this.stream.off('error', ignore)
    return true
  }

  reset(code?: number): void {
    resetTunnel(this.stream, code)
  }
}

function ignore(): void {}

function handshakeFailureReason(err: Error): HboneHandshakeFailure['reason'] {
  const code = (err as { code?: unknown }).code
  if (code === HboneErrorCode.HandshakeTimeout) return 'timeout'
  if (code === HboneErrorCode.Shed) return 'shed'
  return isIdentityError(err) ? 'identity' : 'tls'
}

/** True for the identity package's rejections of a peer (SVID rejected, unexpected peer). */
export function isIdentityError(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code
  return code === IdentityErrorCode.SvidRejected || code === IdentityErrorCode.UnexpectedPeer
}

/** The TCP peer of a socket (canonical IP), if it is still connected. */
export function remoteOf(socket: Socket): SocketAddress | undefined {
  const address = socket.remoteAddress === undefined ? undefined : tryCanonicalIp(socket.remoteAddress)
  const port = socket.remotePort
  if (address === undefined || port === undefined) return undefined
  return { address, port, family: address.includes(':') ? 6 : 4 }
}

/** What names a TCP connection, the same on its TLS socket: its four addresses. */
function connectionKey(socket: Socket): string {
  return `${socket.remoteAddress}|${socket.remotePort}|${socket.localAddress}|${socket.localPort}`
}

/** `net.connect` to the destination, resolving once connected and honouring the signal. */
export const defaultConnector: UpstreamConnector = (destination, { signal }) =>
  connectTcp({ host: destination.address, port: destination.port, allowHalfOpen: true }, signal, 'upstream connect')
