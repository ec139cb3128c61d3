import { connectTcp } from './connect'
import {
  connect as h2connect,
  constants as h2,
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type OutgoingHttpHeaders,
} from 'node:http2'
import { setMaxListeners } from 'node:events'
import type { Socket } from 'node:net'
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls'
import {
  AmbientError,
  CoreErrorCode,
  abortError,
  formatSocketAddress,
  isAmbientError,
  invalidArgument,
  parseSocketAddress,
  silentLogger,
  throwIfAborted,
  type AbortOptions,
  type Closable,
  type SocketAddress,
} from '@ambientkit/core'
import { IdentityErrorCode, peerSpiffeId } from '@ambientkit/identity'
import { HBONE_PORT, type HboneWindows } from './constants'
import { HboneErrorCode } from './errors'
import { localSettings, positiveInteger, resolveWindows, sessionMemoryFor } from './settings'
import type { HboneSessionStats, TransportClientOptions } from '../transport/contract'
import { PooledSession, SessionPool, establishWithin, sendAtMostTwice, type SessionPolicy } from '../transport/pool'
import { resetTunnel } from './splice'

/** Options passed to a {@link SocketFactory}. */
export interface SocketFactoryOptions {
  /** Aborted when the session attempt is abandoned (client closed or timed out). */
  readonly signal: AbortSignal
  /** The source identity of the session, as given to `connect`. */
  readonly identity?: string
  /** The source address of the session, as given to `connect`; bind to it. */
  readonly sourceAddress?: string
}

/**
 * Opens the TCP connection an HBONE session runs over, resolving once
 * connected. The workload proxy passes one that creates the socket inside
 * the pod's network namespace with mark 0x539.
 */
export type SocketFactory = (address: SocketAddress, options: SocketFactoryOptions) => Promise<Socket>

/** The second argument of a {@link ClientTlsOptionsFn}. */
export interface ClientTlsRequest {
  /** The SPIFFE IDs the server may present (sorted), for identity's `expectedPeers`. */
  readonly expectedIdentities: readonly string[]
  readonly signal: AbortSignal
}

/**
 * TLS options for one new session of source `identity` (`undefined` when
 * `connect` named none). With `@ambientkit/identity`:
 * `(identity, { expectedIdentities, signal }) => tlsClientOptions({ manager, id: identity!, expectedPeers: expectedIdentities, signal })`.
 */
export type ClientTlsOptionsFn = (
  identity: string | undefined,
  request: ClientTlsRequest,
) => ConnectionOptions | Promise<ConnectionOptions>

/** Options of {@link createHboneClient}: a transport client's pooling, keepalive and windows, with TLS and the TCP connection given directly. */
export interface HboneClientOptions extends Omit<TransportClientOptions, 'identities' | 'connectSession'> {
  /**
   * TLS options for a new session: a function of the source identity and
   * the expected server identities, called for each new session (so
   * rotated SVIDs are picked up), normally returning `@ambientkit/identity`'s
   * `tlsClientOptions()` — or one fixed options object. TLS 1.3 and ALPN
   * `h2` are enforced on top, and the server's verified SPIFFE ID
   * (identity's `peerSpiffeId`) must be one of `expectedIdentities`.
   */
  readonly tls: ConnectionOptions | ClientTlsOptionsFn
  /** Opens the TCP connection to the HBONE peer. Default: `net.connect`, bound to `sourceAddress` if given. */
  readonly socketFactory?: SocketFactory
}

/** Options of {@link HboneClient.connect}. */
export interface HboneConnectOptions extends AbortOptions {
  /** SPIFFE IDs the HBONE server may present (at least one). */
  readonly expectedIdentities: readonly string[]
  /** The source identity: selects TLS options and the session pool. */
  readonly identity?: string
  /** The source IP: passed to the socket factory and part of the pool key. */
  readonly sourceAddress?: string
  /** The HBONE peer to connect to. Default `<destination ip>:15008`. */
  readonly via?: SocketAddress | string
  /** Extra request headers (`baggage`, `traceparent`, `forwarded`...). Pseudo-headers are refused. */
  readonly headers?: Readonly<Record<string, string>>
}

/** A pooled HBONE client. */
export interface HboneClient extends Closable {
  /**
   * Opens a tunnel to `destination` (`ip:port` or a core `SocketAddress`):
   * takes (or opens) a pooled session to the HBONE peer, sends `CONNECT`
   * and resolves with the stream once the server answered 200. The stream
   * is the tunnel: write to send, read to receive, `end()` half-closes
   * (END_STREAM), `destroy()` resets it; splice it with a socket through
   * {@link spliceTunnel}.
   *
   * Rejects with `ERR_AMBIENT_HBONE_STATUS` (`details.status`) on a non-200
   * answer, `ERR_AMBIENT_HBONE_IDENTITY_MISMATCH` when the server is not one
   * of `expectedIdentities`, `ERR_AMBIENT_HBONE_CONNECT_FAILED` or
   * `ERR_AMBIENT_HBONE_ALPN` when no session could be opened,
   * `ERR_AMBIENT_HBONE_STREAM` when the stream or session failed first,
   * `ERR_AMBIENT_ABORTED` and `ERR_AMBIENT_CLOSED`.
   *
   * A CONNECT the server did not process (REFUSED_STREAM, a GOAWAY below
   * its stream, or never sent because its session was going away) reached
   * nothing: it is sent once more on another session before
   * `ERR_AMBIENT_HBONE_STREAM` ("refused twice") is given up with.
   */
  connect(destination: SocketAddress | string, options: HboneConnectOptions): Promise<ClientHttp2Stream>
  /** The pooled sessions. */
  stats(): readonly HboneSessionStats[]
  /** Destroys every session (resetting their tunnels). Idempotent. */
  close(): Promise<void>
}

interface ClientConfig extends SessionPolicy {
  readonly tls: ClientTlsOptionsFn
  readonly socketFactory: SocketFactory
  readonly sessionTimeout: number
  readonly windows: HboneWindows
}

/**
 * Creates a pooled HBONE client. Sessions are pooled by (source identity,
 * expected destination identities, HBONE peer address, source address); a
 * session carries at most `maxStreamsPerSession` tunnels (and no more than
 * the server allows), is kept alive with HTTP/2 PINGs and released after
 * `idleTimeout` without tunnels.
 *
 * @example
 * ```ts
 * import type { Socket } from 'node:net'
 * import { tlsClientOptions, type IdentityManager } from '@ambientkit/identity'
 * import { createHboneClient, spliceTunnel } from '@ambientkit/proxy'
 *
 * declare const manager: IdentityManager // holds the source workload's SVID
 * declare const appSocket: Socket // the application's connection, accepted on 15001
 * const client = createHboneClient({
 *   tls: (identity, { expectedIdentities, signal }) =>
 *     tlsClientOptions({ manager, id: identity!, expectedPeers: expectedIdentities, signal }),
 * })
 * const tunnel = await client.connect('10.1.2.5:8080', {
 *   identity: 'spiffe://cluster.local/ns/shop/sa/web',
 *   expectedIdentities: ['spiffe://cluster.local/ns/shop/sa/api'],
 * })
 * await spliceTunnel(appSocket, tunnel)
 * ```
 */
export function createHboneClient(options: HboneClientOptions): HboneClient {
  if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
  const tls = options.tls
  if (typeof tls !== 'function' && (typeof tls !== 'object' || tls === null)) {
    throw invalidArgument('tls', tls, 'TLS client options or a function returning them')
  }
  return new HboneClientImpl({
    tls: typeof tls === 'function' ? tls : () => tls,
    socketFactory: options.socketFactory ?? defaultSocketFactory,
    maxStreams: positiveInteger(options.maxStreamsPerSession, 'maxStreamsPerSession', 100, 2 ** 31 - 1),
    idleTimeout: positiveInteger(options.idleTimeout, 'idleTimeout', 300_000),
    keepaliveInterval: positiveInteger(options.keepaliveInterval, 'keepaliveInterval', 10_000),
    keepaliveTimeout: positiveInteger(options.keepaliveTimeout, 'keepaliveTimeout', 20_000),
    sessionTimeout: positiveInteger(options.sessionTimeout, 'sessionTimeout', 10_000),
    windows: resolveWindows(options.windows, 'windows'),
    logger: options.logger ?? silentLogger,
  })
}

class HboneClientImpl implements HboneClient {
  readonly #config: ClientConfig
  readonly #pool = new SessionPool<NodeSession>()
  readonly #closing = new AbortController()
  #closed: Promise<void> | undefined

  constructor(config: ClientConfig) {
    // Every session being opened listens on it: there is no meaningful limit.
    setMaxListeners(0, this.#closing.signal)
    this.#config = config
  }

  async connect(destination: SocketAddress | string, options: HboneConnectOptions): Promise<ClientHttp2Stream> {
    if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
    const { signal } = options
    throwIfAborted(signal, 'HBONE connect')
    if (this.#closed !== undefined) throw new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed')
    const target = typeof destination === 'string' ? parseSocketAddress(destination, 'destination') : destination
    const authority = formatSocketAddress(target)
    const via = options.via === undefined
      ? { address: target.address, port: HBONE_PORT, family: target.family }
      : typeof options.via === 'string' ? parseSocketAddress(options.via, 'via') : options.via
    const expected = checkExpected(options.expectedIdentities)
    const headers = requestHeaders(authority, options.headers)
    const key = [options.identity ?? '', expected.join(','), formatSocketAddress(via), options.sourceAddress ?? ''].join('|')

    return sendAtMostTwice(authority, this.#config.logger, unprocessed, async () => {
      const session = await this.#pool.acquire(key, () => this.#open(key, via, expected, options), signal, () => this.#closed !== undefined)
      return session.request(headers, authority, signal)
    })
  }

  stats(): readonly HboneSessionStats[] {
    return this.#pool.stats()
  }

  close(): Promise<void> {
    this.#closed ??= this.#close()
    return this.#closed
  }

  async #close(): Promise<void> {
    this.#closing.abort(new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed'))
    await Promise.all(this.#pool.all().map((session) => session.destroy('HBONE client is closed')))
    this.#pool.clear()
  }

  #open(key: string, via: SocketAddress, expected: readonly string[], options: HboneConnectOptions): Promise<NodeSession> {
    return establishWithin(this.#config.sessionTimeout, this.#closing.signal, (signal) => this.#establish(key, via, expected, options, signal))
  }

  async #establish(key: string, via: SocketAddress, expected: readonly string[], options: HboneConnectOptions, signal: AbortSignal): Promise<NodeSession> {
    const config = this.#config
    const source = { identity: options.identity, sourceAddress: options.sourceAddress }
    const peer = formatSocketAddress(via)
    let tcp: Socket
    try {
      tcp = await config.socketFactory(via, { signal, ...source })
    } catch (err) {
      throw connectFailed(peer, err, signal)
    }
    // Many tunnels share a session: Nagle would hold one tunnel's small frame back until another's ACK.
    tcp.setNoDelay(true)
    // A session ends with its connection: the server's FIN must not leave it (and its tunnels) half-open.
    tcp.allowHalfOpen = false
    // The TCP socket waits for the TLS options unguarded otherwise: an error then would be uncaught.
    let early: Error | undefined
    tcp.on('error', (err) => (early ??= err))
    let tlsSocket: TLSSocket | undefined
    try {
      const tlsOptions = await config.tls(options.identity, { expectedIdentities: expected, signal })
      if (early !== undefined || tcp.destroyed) throw early ?? new Error('connection closed before the TLS handshake')
      tlsSocket = await handshake(tcp, tlsOptions, signal, peer)
      if (tlsSocket.alpnProtocol !== 'h2') {
        throw new AmbientError(HboneErrorCode.Alpn, `HBONE peer ${peer} did not negotiate ALPN h2 (got ${String(tlsSocket.alpnProtocol)})`, {
          details: { peer, alpn: tlsSocket.alpnProtocol },
        })
      }
      let peerIdentity: string
      try {
        peerIdentity = peerSpiffeId(tlsSocket).toString()
      } catch (err) {
        throw new AmbientError(HboneErrorCode.IdentityMismatch, `HBONE peer ${peer} presented no valid SPIFFE ID`, { cause: err, details: { peer } })
      }
      if (!expected.includes(peerIdentity)) {
        throw new AmbientError(
          HboneErrorCode.IdentityMismatch,
          `HBONE peer ${peer} presented ${peerIdentity}, expected one of ${expected.join(', ')}`,
          { details: { peer, identity: peerIdentity, expected } },
        )
      }
      const session = await startSession(tlsSocket, peer, config, signal)
      if (this.#closed !== undefined) {
        session.destroy()
        throw new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed')
      }
      const pooled = new NodeSession(session, peerIdentity, config, () => this.#pool.remove(key, pooled))
      pooled.validUntil(certificatesValidUntil(tlsSocket))
      this.#pool.add(key, pooled)
      pooled.pooled()
      config.logger.debug({ peer, identity: peerIdentity, key }, 'HBONE session opened')
      return pooled
    } catch (err) {
      if (tlsSocket !== undefined) tlsSocket.destroy()
      tcp.destroy()
      if (err instanceof AmbientError) throw err
      throw connectFailed(peer, err, signal)
    }
  }
}

/** One HTTP/2 session of Node's in the pool; when it takes tunnels and how it is kept is the shared {@link PooledSession} policy. */
class NodeSession extends PooledSession {
  readonly #session: ClientHttp2Session
  // Listeners of every stream of the session, rather than closures per tunnel.
  readonly #onStreamClose = (): void => this.release()
  /** A tunnel's failure must never crash the process; it is also seen as a reset by whoever reads the stream. */
  readonly #onStreamError: (this: ClientHttp2Stream, err: Error) => void

  constructor(session: ClientHttp2Session, peerIdentity: string, config: ClientConfig, removed: () => void) {
    super(config, removed)
    this.#onStreamError = function (err) {
      config.logger.debug({ err, authority: this.sentHeaders[':authority'] }, 'HBONE tunnel error')
    }
    this.#session = session
    this.peerIdentity = peerIdentity
    session.once('goaway', () => this.retire())
    session.once('close', () => this.ended())
    session.on('error', (err) => config.logger.debug({ err, peer: peerIdentity }, 'HBONE session error'))
  }

  protected isClosed(): boolean {
    return this.#session.closed || this.#session.destroyed
  }

  protected remoteMaxStreams(): number {
    return this.#session.remoteSettings.maxConcurrentStreams ?? Number.POSITIVE_INFINITY
  }

  protected sendPing(): boolean {
    return this.#session.ping((err) => {
      if (err === null) this.pingAnswered()
    })
  }

  protected shutdown(): void {
    this.#session.close()
  }

  request(headers: OutgoingHttpHeaders, authority: string, signal: AbortSignal | undefined): Promise<ClientHttp2Stream> {
    let stream: ClientHttp2Stream
    try {
      stream = this.#session.request(headers, { endStream: false })
    } catch (err) {
      this.release()
      // The session is closing (GOAWAY, or closed as it was chosen): the CONNECT never left.
      return Promise.reject(new AmbientError(HboneErrorCode.Stream, `HBONE CONNECT ${authority} could not be sent`, { cause: err, details: { authority, unprocessed: true } }))
    }
    stream.on('close', this.#onStreamClose)
    stream.on('error', this.#onStreamError)
    return new Promise((resolve, reject) => {
      const done = (err?: Error): void => {
        stream.off('response', onResponse)
        stream.off('error', onError)
        stream.off('close', onClose)
        signal?.removeEventListener('abort', onAbort)
        if (err === undefined) {
          resolve(stream)
          return
        }
        resetTunnel(stream, h2.NGHTTP2_CANCEL)
        reject(err)
      }
      const onResponse = (response: { ':status'?: number }): void => {
        const status = response[':status'] ?? 0
        if (status === 200) done()
        else {
          done(new AmbientError(HboneErrorCode.Status, `HBONE CONNECT ${authority} was answered with status ${status}`, {
            details: { status, authority },
          }))
        }
      }
      const onError = (err: Error): void =>
        done(new AmbientError(HboneErrorCode.Stream, `HBONE CONNECT ${authority} failed: ${err.message}`, {
          cause: err,
          details: { authority, rstCode: stream.rstCode },
        }))
      const onClose = (): void =>
        done(new AmbientError(HboneErrorCode.Stream, `HBONE CONNECT ${authority} was closed before a response (code ${stream.rstCode})`, {
          details: { authority, rstCode: stream.rstCode },
        }))
      const onAbort = (): void => done(abortError(signal!, 'HBONE connect'))
      stream.once('response', onResponse)
      stream.once('error', onError)
      stream.once('close', onClose)
      if (signal?.aborted === true) onAbort()
      else signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  destroy(reason: string): Promise<void> {
    this.retire()
    if (this.#session.destroyed) return Promise.resolve()
    return new Promise((resolve) => {
      this.#session.once('close', () => resolve())
      this.#session.destroy(new AmbientError(HboneErrorCode.Stream, reason))
    })
  }
}

/** The expected server identities, checked and sorted (they are part of a pool key). */
export function checkExpected(value: unknown): readonly string[] {
  if (!Array.isArray(value) || value.length === 0 || !value.every((id) => typeof id === 'string' && id.startsWith('spiffe://'))) {
    throw invalidArgument('expectedIdentities', value, 'a non-empty array of spiffe:// IDs')
  }
  return [...(value as string[])].sort()
}

/** The headers of a `CONNECT` to `authority`, with the caller's extra ones checked (no pseudo-headers, string values). */
export function requestHeaders(authority: string, extra: Readonly<Record<string, string>> | undefined): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = { ':method': 'CONNECT', ':authority': authority }
  if (extra === undefined) return headers
  for (const [name, value] of Object.entries(extra)) {
    if (name.startsWith(':')) throw invalidArgument(`headers[${JSON.stringify(name)}]`, name, 'a regular header (pseudo-headers are set by the client)')
    if (typeof value !== 'string') throw invalidArgument(`headers[${JSON.stringify(name)}]`, value, 'a string')
    headers[name.toLowerCase()] = value
  }
  return headers
}

/** A session that could not be established, as `ERR_AMBIENT_HBONE_CONNECT_FAILED` naming the peer (ambient errors pass through). */
export function connectFailed(peer: string, err: unknown, signal: AbortSignal): AmbientError {
  if (err instanceof AmbientError) return err
  const reason = signal.aborted ? ` (${(signal.reason as Error | undefined)?.message ?? 'aborted'})` : ''
  return new AmbientError(HboneErrorCode.ConnectFailed, `HBONE session to ${peer} failed: ${(err as Error).message}${reason}`, {
    cause: err,
    details: { peer },
  })
}

/**
 * Whether a failed CONNECT never reached the destination, so that sending it
 * again cannot duplicate anything: it was never sent, or the server refused
 * the stream unprocessed (REFUSED_STREAM, also how a GOAWAY below its id ends
 * it: RFC 9113 §8.7).
 */
function unprocessed(err: unknown): boolean {
  if (!isAmbientError(err) || err.code !== HboneErrorCode.Stream) return false
  return err.details.unprocessed === true || err.details.rstCode === h2.NGHTTP2_REFUSED_STREAM
}

/** When the earlier of the two certificates of a TLS connection expires (milliseconds since the epoch; `Infinity` when neither is known). */
export function certificatesValidUntil(socket: TLSSocket): number {
  const times = [socket.getPeerX509Certificate(), socket.getX509Certificate()].map((certificate) =>
    certificate === undefined ? Number.POSITIVE_INFINITY : Date.parse(certificate.validTo),
  )
  return Math.min(...times.map((time) => (Number.isNaN(time) ? Number.POSITIVE_INFINITY : time)))
}

function handshake(tcp: Socket, options: ConnectionOptions, signal: AbortSignal, peer: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      // SPIFFE identity, not a host name, is verified (against expectedIdentities, after the handshake).
      checkServerIdentity: () => undefined,
      ...options,
      socket: tcp,
      minVersion: 'TLSv1.3',
      ALPNProtocols: ['h2'],
    })
    const done = (err?: Error): void => {
      socket.off('secureConnect', onSecure)
      socket.off('error', done)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) resolve(socket)
      else {
        socket.destroy()
        const code = (err as { code?: unknown }).code
        if (code === IdentityErrorCode.UnexpectedPeer || code === IdentityErrorCode.SvidRejected) {
          reject(new AmbientError(HboneErrorCode.IdentityMismatch, `HBONE peer ${peer} was refused: ${err.message}`, { cause: err, details: { peer } }))
          return
        }
        reject(new AmbientError(HboneErrorCode.ConnectFailed, `HBONE TLS handshake with ${peer} failed: ${err.message}`, {
          cause: err,
          details: { peer },
        }))
      }
    }
    const onSecure = (): void => done()
    const onAbort = (): void => done(signal.reason as Error)
    socket.once('secureConnect', onSecure)
    socket.once('error', done)
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
  })
}

function startSession(socket: TLSSocket, peer: string, config: ClientConfig, signal: AbortSignal): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = h2connect(`https://${peer}`, {
      createConnection: () => socket,
      settings: localSettings(config.windows),
      maxSessionMemory: sessionMemoryFor(config.windows),
    })
    // Wait for the server's SETTINGS so its SETTINGS_MAX_CONCURRENT_STREAMS is known before the first stream.
    const done = (err?: Error): void => {
      session.off('remoteSettings', onSettings)
      session.off('error', done)
      session.off('close', onClose)
      signal.removeEventListener('abort', onAbort)
      if (err === undefined) {
        session.setLocalWindowSize(config.windows.connection)
        resolve(session)
      } else {
        session.destroy()
        reject(new AmbientError(HboneErrorCode.ConnectFailed, `HBONE session with ${peer} failed: ${err.message}`, { cause: err, details: { peer } }))
      }
    }
    const onSettings = (): void => done()
    const onClose = (): void => done(new Error('closed before its SETTINGS'))
    const onAbort = (): void => done(signal.reason as Error)
    session.once('remoteSettings', onSettings)
    session.once('error', done)
    session.once('close', onClose)
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** `net.connect` to the HBONE peer (bound to `sourceAddress` if given), resolving once connected. */
export const defaultSocketFactory: SocketFactory = (address, { signal, sourceAddress }) =>
  connectTcp(
    { host: address.address, port: address.port, ...(sourceAddress === undefined ? {} : { localAddress: sourceAddress }) },
    signal,
    'HBONE TCP connect',
  )
