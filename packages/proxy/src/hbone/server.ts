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
import { setMaxListeners } from 'node:events'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import {
  AmbientError,
  CoreErrorCode,
  abortError,
  invalidArgument,
  parseSocketAddress,
  silentLogger,
  throwIfAborted,
  tryCanonicalIp,
  type AbortOptions,
  type Closable,
  type Logger,
  type SocketAddress,
} from '@ambientkit/core'
import { IdentityErrorCode, attachTlsServer, peerSpiffeId, type SpiffeTlsServerOptions, type TlsServerBinding } from '@ambientkit/identity'
import type { HboneWindows } from './constants'
import { localSettings, positiveInteger, resolveWindows, sessionMemoryFor } from './settings'
import { resetTunnel, startTunnelSplice, type SpliceOutcome } from './splice'
import { HboneErrorCode } from './errors'
import { forwardedFor } from './forwarded'

/** What an HBONE server knows about one `CONNECT` when it asks {@link HboneServerOptions.decide}. */
export interface HboneRequest {
  /** The peer's SPIFFE ID, verified during the mTLS handshake. */
  readonly peerIdentity: string
  /** The TCP peer of the HBONE connection (canonical IP). */
  readonly peerAddress: SocketAddress
  /** The tunnel's destination, parsed strictly from `:authority`. */
  readonly destination: SocketAddress
  /** W3C `baggage` header, if present. */
  readonly baggage?: string
  /** W3C `traceparent` header, if present. */
  readonly traceparent?: string
  /**
   * The original client address from `forwarded: for=...` (RFC 7239) —
   * set only when {@link HboneServerOptions.trustForwarded} trusts this
   * peer; an ordinary peer cannot claim another source address.
   */
  readonly forwardedFor?: string
  /** The request headers. `forwarded` is removed unless the peer is trusted. */
  readonly headers: Readonly<IncomingHttpHeaders>
}

/** The answer of {@link HboneServerOptions.decide}. */
export type HboneDecision =
  /** Connect upstream and answer 200 once connected. `context` is handed to the connector. */
  | { readonly action: 'serve'; readonly context?: unknown; readonly policy?: string }
  /** The destination is not served by this listener: 400. */
  | { readonly action: 'not-served'; readonly reason: string }
  /** The destination is unknown: 503. */
  | { readonly action: 'unknown'; readonly reason: string }
  /** Denied by authorization: 401. `policy` names the deciding policy for logs. */
  | { readonly action: 'deny'; readonly reason: string; readonly policy?: string }

/** Options passed to an {@link UpstreamConnector}. */
export interface UpstreamConnectOptions {
  /** Aborted when the tunnel's stream goes away, the connect times out or the server closes. */
  readonly signal: AbortSignal
  /** The request being served. */
  readonly request: HboneRequest
  /** The `context` of the `serve` decision. */
  readonly context?: unknown
}

/**
 * Opens the upstream TCP connection of a tunnel and resolves once it is
 * connected. The workload proxy passes one that creates the socket inside
 * the pod's network namespace with mark 0x539.
 */
export type UpstreamConnector = (destination: SocketAddress, options: UpstreamConnectOptions) => Promise<Socket>

/** Why a tunnel ended, as reported by {@link HboneServerOptions.onTunnel}. */
export type HboneTunnelOutcome =
  | SpliceOutcome
  /** Answered with a non-200 status (see `status` and `reason`). */
  | 'rejected'
  /** The peer reset the stream (or the session died) before the upstream connect finished. */
  | 'cancelled'

/** One finished tunnel (or rejected request): the facts for access logs and metrics. */
export interface HboneTunnelRecord {
  readonly peerIdentity: string
  readonly peerAddress: SocketAddress
  /** The parsed destination; absent when `:authority` was missing or malformed. */
  readonly destination?: SocketAddress
  /** The raw `:authority`, for requests whose destination could not be parsed. */
  readonly authority?: string
  /** The HTTP status answered; 0 when none was sent. */
  readonly status: number
  readonly outcome: HboneTunnelOutcome
  /** A short reason (`not-connect`, `bad-authority`, `not-served`, `unknown-destination`, `denied`, `upstream-connect-failed`, ...). */
  readonly reason?: string
  /** The deciding policy: the one that denied, or the one that allowed when the decision named it. */
  readonly policy?: string
  /** Bytes the peer sent through the tunnel (written upstream). */
  readonly bytesReceived: number
  /** Bytes sent to the peer (read from upstream). */
  readonly bytesSent: number
  /** From the arrival of the `CONNECT` to the close of both sides, in milliseconds. */
  readonly durationMs: number
  readonly error?: Error
}

/** A connection that failed before any tunnel: TLS handshake, ALPN or identity. */
export interface HboneHandshakeFailure {
  /** The TCP peer, when known. */
  readonly peerAddress?: SocketAddress
  readonly reason: 'tls' | 'alpn' | 'identity'
  readonly error: Error
}

/** Options of {@link createHboneServer}. */
export interface HboneServerOptions {
  /**
   * The object returned by `@ambientkit/identity`'s `tlsServerOptions()`:
   * it presents this workload's SVID, and the server attaches it
   * (`attachTlsServer`) so every client SVID is verified against the bundle
   * of its own trust domain (local or federated) and rotated SVIDs are
   * picked up. The server enforces on top: TLS 1.3 only, ALPN `h2`, a client
   * certificate required.
   */
  readonly tls: SpiffeTlsServerOptions
  /** Decides each `CONNECT` (serve / not-served / unknown / deny). */
  readonly decide: (request: HboneRequest) => HboneDecision | Promise<HboneDecision>
  /** Opens upstream connections. Default: `net.connect` to the destination, half-open allowed. */
  readonly connect?: UpstreamConnector
  /** Peers whose `forwarded: for=` header is believed (e.g. a waypoint). Default: none. */
  readonly trustForwarded?: (peerIdentity: string) => boolean
  /** Upstream connect timeout in milliseconds (then 503). Default 10 000. */
  readonly connectTimeout?: number
  /** SETTINGS_MAX_CONCURRENT_STREAMS announced to clients. Default 1000. */
  readonly maxConcurrentStreams?: number
  /** Flow-control windows and frame size. Default {@link DEFAULT_HBONE_WINDOWS}. */
  readonly windows?: Partial<HboneWindows>
  /** Called when a tunnel is established (the upstream connected and 200 was sent), for open-tunnel gauges. */
  readonly onTunnelOpen?: (request: HboneRequest) => void
  /** Called once per `CONNECT`, when it is rejected or its tunnel has closed. */
  readonly onTunnel?: (record: HboneTunnelRecord) => void
  /** Called when a connection fails before it can carry a tunnel. */
  readonly onHandshakeFailure?: (failure: HboneHandshakeFailure) => void
  /** Default: silent. */
  readonly logger?: Logger
}

/** Counts of what a server holds open, for metrics and leak checks. */
export interface HboneServerStats {
  /** TCP connections handed to the server and not yet closed (handshaking or carrying a session). */
  readonly connections: number
  /** Established HTTP/2 sessions. */
  readonly sessions: number
  /** `CONNECT` streams being decided, connecting upstream or carrying bytes. */
  readonly tunnels: number
}

/** An HBONE server: mTLS HTTP/2 `CONNECT` termination. */
export interface HboneServer extends Closable {
  /**
   * Serves an accepted TCP connection (for example from a listener the
   * redirect package opened inside a pod's network namespace).
   */
  handle(socket: Socket): void
  /** Convenience: listens on its own TCP socket. Resolves with the bound address. */
  listen(port: number, host?: string, options?: AbortOptions): Promise<SocketAddress>
  /** The address {@link listen} bound, if listening. */
  address(): SocketAddress | undefined
  stats(): HboneServerStats
  /**
   * Graceful shutdown: stops listening, refuses new connections, sends
   * GOAWAY on every session (clients open new tunnels elsewhere) and
   * resolves once the open tunnels have finished and their sessions closed.
   * Race it with a deadline and call {@link close} for what is left.
   */
  drain(): Promise<void>
  /** Stops listening, resets every tunnel and closes every session and connection. Idempotent. */
  close(): Promise<void>
}

/** Options after defaults, shared by every stream of one server. */
interface ServerConfig {
  readonly decide: HboneServerOptions['decide']
  readonly connect: UpstreamConnector
  readonly trustForwarded: (peerIdentity: string) => boolean
  readonly connectTimeout: number
  readonly onTunnelOpen: (request: HboneRequest) => void
  readonly onTunnel: (record: HboneTunnelRecord) => void
  readonly onHandshakeFailure: (failure: HboneHandshakeFailure) => void
  readonly logger: Logger
}

/** Who is on the other end of a session: its verified identity and TCP address. */
export interface SessionPeer {
  readonly identity: string
  readonly address: SocketAddress
}

/**
 * Creates an HBONE server: it terminates mutual TLS (TLS 1.3, ALPN `h2`,
 * client certificate required), accepts HTTP/2 `CONNECT` requests whose
 * `:authority` is `ip:port` or `[ipv6]:port`, asks `decide` what to do,
 * connects upstream, and answers 200 only once that connect succeeded.
 *
 * Status codes: not `CONNECT` → 400; missing or malformed `:authority` →
 * 400; not served here → 400; unknown destination → 503; denied → 401;
 * upstream connect failed or timed out → 503; `decide` threw → 500.
 *
 * @example
 * ```ts
 * const server = createHboneServer({
 *   tls: identity.tlsServerOptions(),
 *   decide: ({ destination }) => (destination.port === 8080 ? { action: 'serve' } : { action: 'not-served', reason: 'port' }),
 * })
 * netServer.on('connection', (socket) => server.handle(socket))
 * ```
 */
export function createHboneServer(options: HboneServerOptions): HboneServer {
  if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
  if (typeof options.tls !== 'object' || options.tls === null) throw invalidArgument('tls', options.tls, 'TLS server options')
  if (typeof options.decide !== 'function') throw invalidArgument('decide', options.decide, 'a function')
  return new HboneServerImpl(options)
}

class HboneServerImpl implements HboneServer {
  readonly #config: ServerConfig
  readonly #tls: Http2SecureServer
  readonly #sockets = new Set<Socket>()
  readonly #sessions = new Set<ServerHttp2Session>()
  readonly #peers = new WeakMap<Http2Session, SessionPeer>()
  readonly #streams = new Set<ServerHttp2Stream>()
  /** `close` listener of every stream (the stream is `this`): one function per server rather than a closure per tunnel. */
  readonly #forgetStream: (this: ServerHttp2Stream) => void
  readonly #closing = withoutListenerLimit(new AbortController())
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
    const logger = options.logger ?? silentLogger
    this.#config = {
      decide: options.decide,
      connect: options.connect ?? defaultConnector,
      trustForwarded: options.trustForwarded ?? (() => false),
      connectTimeout: positiveInteger(options.connectTimeout, 'connectTimeout', 10_000),
      onTunnelOpen: options.onTunnelOpen ?? (() => {}),
      onTunnel: options.onTunnel ?? (() => {}),
      onHandshakeFailure: options.onHandshakeFailure ?? (() => {}),
      logger,
    }
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
    this.#tls.on('tlsClientError', (error: Error, socket: TLSSocket) => {
      this.#handshakeFailure(socket, isIdentityError(error) ? 'identity' : 'tls', error)
    })
    this.#tls.on('unknownProtocol', (socket: TLSSocket) => {
      this.#handshakeFailure(socket, 'alpn', new AmbientError(HboneErrorCode.Alpn, 'client did not negotiate ALPN h2'))
      socket.destroy()
    })
    this.#tls.on('session', (session: ServerHttp2Session) => this.#onSession(session, windows))
    this.#tls.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => this.#onStream(stream, headers))
  }

  handle(socket: Socket): void {
    if (this.#closed !== undefined || this.#draining !== undefined) {
      socket.destroy()
      return
    }
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
    this.#sockets.add(socket)
    socket.once('close', () => this.#sockets.delete(socket))
    // Many tunnels share a session: Nagle would hold one tunnel's small frame back until another's ACK.
    socket.setNoDelay(true)
  }

  #handshakeFailure(socket: Socket, reason: HboneHandshakeFailure['reason'], error: Error): void {
    const peerAddress = remoteOf(socket)
    this.#config.logger.debug({ peer: peerAddress, reason, err: error }, 'HBONE handshake failed')
    report(this.#config.logger, () => this.#config.onHandshakeFailure({ peerAddress, reason, error }))
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
    this.#peers.set(session, { identity, address })
    this.#sessions.add(session)
    session.once('close', () => this.#sessions.delete(session))
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
    this.#serve(stream, headers, peer).catch((err: unknown) => {
      this.#config.logger.error({ err, peer: peer.identity }, 'HBONE stream handling failed')
      resetTunnel(stream, h2.NGHTTP2_INTERNAL_ERROR)
    })
  }

  async #serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, peer: SessionPeer): Promise<void> {
    const started = performance.now()
    const config = this.#config
    const authority = headers[':authority']
    const finish = (fields: TunnelRecordFields): void => reportTunnel(config, peer, started, fields)
    const reject = (status: number, reason: string, extra: Partial<HboneTunnelRecord> = {}): void => {
      const open = isOpen(stream)
      if (open) {
        stream.respond({ ':status': status }, { endStream: true })
        // Drain whatever the client still sends so the stream can close.
        stream.resume()
      }
      finish({ status: open ? status : 0, outcome: open ? 'rejected' : 'cancelled', reason, authority, ...extra })
    }

    const destination = connectDestination(headers[':method'], authority)
    if (typeof destination === 'string') return reject(400, destination)
    const request = buildRequest(headers, peer, destination, config.trustForwarded(peer.identity))

    let decision: HboneDecision
    try {
      decision = await config.decide(request)
    } catch (err) {
      config.logger.error({ err, peer: peer.identity, destination: authority }, 'HBONE decide hook threw')
      return reject(500, 'decide-failed', { destination, error: err as Error })
    }
    if (decision.action !== 'serve') {
      const refusal = refusalOf(decision, config.logger)
      return reject(refusal.status, refusal.reason, { destination, ...(refusal.policy === undefined ? {} : { policy: refusal.policy }) })
    }

    if (!isOpen(stream)) return finish({ status: 0, outcome: 'cancelled', destination })
    const attempt = new AbortController()
    const abort = (message: string) => (): void => attempt.abort(new AmbientError(CoreErrorCode.Aborted, message))
    const onStreamGone = abort('HBONE stream closed before upstream connected')
    const onClosing = abort('HBONE server closed before upstream connected')
    const timer = setTimeout(abort(`upstream connect timed out after ${config.connectTimeout} ms`), config.connectTimeout)
    stream.once('close', onStreamGone)
    this.#closing.signal.addEventListener('abort', onClosing, { once: true })
    if (this.#closing.signal.aborted) onClosing()
    let upstream: Socket
    try {
      upstream = await config.connect(destination, { signal: attempt.signal, request, context: decision.context })
    } catch (err) {
      if (!isOpen(stream)) return finish({ status: 0, outcome: 'cancelled', destination, error: err as Error })
      config.logger.debug({ err, destination: authority }, 'HBONE upstream connect failed')
      return reject(503, 'upstream-connect-failed', { destination, error: err as Error })
    } finally {
      clearTimeout(timer)
      stream.off('close', onStreamGone)
      this.#closing.signal.removeEventListener('abort', onClosing)
    }
    if (!isOpen(stream)) {
      upstream.resetAndDestroy()
      return finish({ status: 0, outcome: 'cancelled', destination })
    }
    stream.respond({ ':status': 200 })
    report(config.logger, () => config.onTunnelOpen(request))
    spliceAndReport(config, upstream, stream, peer, started, destination, decision.policy)
  }
}

/** What a tunnel's record says beyond its peer and duration. */
export type TunnelRecordFields = Pick<HboneTunnelRecord, 'status' | 'outcome'> & Partial<HboneTunnelRecord>

/** Reports one `CONNECT` to `onTunnel`: its peer, how long since `started` (`performance.now()`), and `fields`. */
export function reportTunnel(config: { readonly logger: Logger; readonly onTunnel: (record: HboneTunnelRecord) => void }, peer: SessionPeer, started: number, fields: TunnelRecordFields): void {
  const record: HboneTunnelRecord = {
    peerIdentity: peer.identity,
    peerAddress: peer.address,
    bytesReceived: 0,
    bytesSent: 0,
    durationMs: performance.now() - started,
    ...fields,
  }
  report(config.logger, () => config.onTunnel(record))
}

/**
 * The established phase of a tunnel, outside `#serve`: an idle tunnel then
 * keeps only what its record needs, not the request, the connect attempt's
 * signal and timer, and a suspended async function.
 */
function spliceAndReport(
  config: ServerConfig,
  upstream: Socket,
  stream: ServerHttp2Stream,
  peer: SessionPeer,
  started: number,
  destination: SocketAddress,
  policy: string | undefined,
): void {
  startTunnelSplice(upstream, stream, (result) =>
    reportTunnel(config, peer, started, {
      status: 200,
      outcome: result.outcome,
      destination,
      ...(policy === undefined ? {} : { policy }),
      bytesReceived: result.socketBytesWritten,
      bytesSent: result.socketBytesRead,
      error: result.error,
    }),
  )
}

/**
 * A `CONNECT` to `destination` from `peer` as `decide` sees it. `forwarded`
 * is believed only from a `trusted` peer, and removed from the headers otherwise.
 */
export function buildRequest(headers: IncomingHttpHeaders, peer: SessionPeer, destination: SocketAddress, trusted: boolean): HboneRequest {
  const single = (name: string): string | undefined => {
    const value = headers[name]
    return typeof value === 'string' ? value : undefined
  }
  const visible: IncomingHttpHeaders = { ...headers }
  let original: string | undefined
  if (trusted) original = forwardedFor(single('forwarded'))
  else delete visible.forwarded
  return {
    peerIdentity: peer.identity,
    peerAddress: peer.address,
    destination,
    baggage: single('baggage'),
    traceparent: single('traceparent'),
    forwardedFor: original,
    headers: visible,
  }
}

/**
 * The destination of a request, parsed strictly from `:authority`
 * (`ip:port` or `[ipv6]:port`), or why it is answered 400: `not-connect`
 * for another method, `bad-authority` for a missing or malformed authority.
 */
export function connectDestination(method: unknown, authority: unknown): SocketAddress | 'not-connect' | 'bad-authority' {
  if (method !== 'CONNECT') return 'not-connect'
  if (typeof authority !== 'string') return 'bad-authority'
  try {
    return parseSocketAddress(authority, ':authority')
  } catch {
    return 'bad-authority'
  }
}

/** How a decision other than `serve` is answered: not served 400, unknown 503, denied 401, anything else 500. */
export function refusalOf(decision: Exclude<HboneDecision, { readonly action: 'serve' }>, logger: Logger): { status: number; reason: string; policy?: string } {
  switch (decision.action) {
    case 'not-served':
      return { status: 400, reason: decision.reason }
    case 'unknown':
      return { status: 503, reason: decision.reason }
    case 'deny':
      return { status: 401, reason: decision.reason, policy: decision.policy }
    default:
      logger.error({ decision }, 'HBONE decide hook returned an unknown action')
      return { status: 500, reason: 'decide-failed' }
  }
}

/** Every pending upstream connect listens on the server's closing signal: there is no meaningful limit. */
export function withoutListenerLimit(controller: AbortController): AbortController {
  setMaxListeners(0, controller.signal)
  return controller
}

/** True while a response can still be sent on the stream. */
function isOpen(stream: ServerHttp2Stream): boolean {
  return !stream.destroyed && !stream.closed && !stream.headersSent
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

/** Calls an observer hook; one that throws is logged, never breaks a tunnel. */
export function report(logger: Logger, hook: () => void): void {
  try {
    hook()
  } catch (err) {
    logger.error({ err }, 'HBONE observer hook threw')
  }
}

/** `net.connect` to the destination, resolving once connected and honouring the signal. */
export const defaultConnector: UpstreamConnector = (destination, { signal }) =>
  connectTcp({ host: destination.address, port: destination.port, allowHalfOpen: true }, signal, 'upstream connect')
