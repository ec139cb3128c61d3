import { closeSync } from 'node:fs'
import { constants as h2, type IncomingHttpHeaders } from 'node:http2'
import type { Socket } from 'node:net'
import {
  AmbientError,
  CoreErrorCode,
  invalidArgument,
  silentLogger,
  type Closable,
  type Logger,
  type SocketAddress,
} from '@ambientkit/core'
import type { IdentityManager, X509Svid } from '@ambientkit/identity'
import { HboneErrorCode } from './errors'
import { NativeEvent, type NativeAddon, type NativeSession, type NativeSettings, type NativeTlsContext } from './native'
import { nativeTlsContext, verifiedPeerIdentity } from './native-tls'
import { NativeTunnel, detachSocket, nativeSettings, spliceResultOf } from './native-tunnel'
import {
  buildRequest,
  connectDestination,
  refusalOf,
  remoteOf,
  report,
  reportTunnel,
  withoutListenerLimit,
  type HboneDecision,
  type HboneHandshakeFailure,
  type HboneRequest,
  type HboneServerOptions,
  type HboneServerStats,
  type HboneTunnelRecord,
  type SessionPeer,
  type TunnelRecordFields,
  type UpstreamConnectOptions,
} from './server'
import { positiveInteger, resolveWindows } from './settings'

/** Options passed to a {@link NativeUpstreamConnector}. */
export interface NativeUpstreamConnectOptions extends UpstreamConnectOptions {
  /**
   * The tunnel being served. Resetting it resets the stream and the
   * upstream connection; whenever the connector resolved, the tunnel
   * reports its end through `onClose` (also when it never carried a byte).
   */
  readonly tunnel: NativeTunnel
}

/**
 * Opens the upstream TCP connection of a tunnel and resolves with its
 * connected descriptor, which the server owns from then on. Nothing may
 * have read from it: the workload proxy uses `Netns.connectFd`.
 */
export type NativeUpstreamConnector = (destination: SocketAddress, options: NativeUpstreamConnectOptions) => Promise<number>

/**
 * Options of {@link createNativeHboneServer}: the Node server's decision,
 * forwarding, timeout, window and reporting options, with the same
 * defaults; TLS comes from `identities` and upstreams from `connect` as
 * descriptors.
 */
export interface NativeHboneServerOptions
  extends Pick<
    HboneServerOptions,
    'decide' | 'trustForwarded' | 'connectTimeout' | 'maxConcurrentStreams' | 'windows' | 'onTunnelOpen' | 'onTunnel' | 'onHandshakeFailure' | 'logger'
  > {
  /** The loaded addon (`nativeHbone()`). */
  readonly addon: NativeAddon
  /** Holds the SVID presented (kept renewed while the server runs) and the bundles clients are verified with. */
  readonly identities: IdentityManager
  /** The SPIFFE ID whose current SVID is presented; a rotated SVID is presented from the next connection on. */
  readonly identity: string
  /** Opens upstream connections. */
  readonly connect: NativeUpstreamConnector
}

/** The inbound half of HBONE on the native data path: the same answers as `createHboneServer`, bytes never in JavaScript. */
export interface NativeHboneServer extends Closable {
  /**
   * Serves an accepted TCP connection: it is handed over to the addon. It
   * must be a socket Node never read from (accepted with `pauseOnConnect`),
   * or bytes of the TLS handshake would be lost.
   */
  handle(socket: Socket): void
  stats(): HboneServerStats
  /**
   * Graceful shutdown: refuses new connections, sends GOAWAY on every
   * session and resolves once their tunnels have finished and they closed.
   */
  drain(): Promise<void>
  /** Resets every tunnel and closes every session and connection. Idempotent. */
  close(): Promise<void>
}

/** One accepted connection, from the handshake until the addon's `Close`. */
class ServerSession {
  session!: NativeSession
  /** Set once the handshake accepted the client. */
  peer: SessionPeer | undefined
  /** Set when the handshake refused the client (already reported). */
  refused = false
  readonly streams = new Map<number, ServerStream>()
  readonly closed: Promise<void>
  onClosed!: () => void

  constructor(readonly address: SocketAddress) {
    this.closed = new Promise((resolve) => (this.onClosed = resolve))
  }
}

/** One `CONNECT`: being decided, connecting upstream, or spliced. */
class ServerStream {
  /** The stream closed (its `StreamClose` arrived). */
  gone = false
  /** While connecting upstream: aborted when the stream goes away. */
  attempt: AbortController | undefined
  /** Once spliced: what its record needs when it closes. */
  spliced: { readonly tunnel: NativeTunnel; readonly destination: SocketAddress; readonly policy: string | undefined } | undefined

  constructor(
    readonly id: number,
    readonly started: number,
  ) {}
}

/**
 * Creates the native HBONE server. Mutual TLS 1.3 and ALPN `h2` are the
 * addon's; the client's SVID is verified against the bundle of its own
 * trust domain; each `CONNECT` gets exactly the answer `createHboneServer`
 * gives (not `CONNECT` → 400, malformed `:authority` → 400, not served →
 * 400, unknown → 503, denied → 401, upstream connect failed or timed out →
 * 503, `decide` threw → 500) and the same records.
 */
export function createNativeHboneServer(options: NativeHboneServerOptions): NativeHboneServer {
  if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
  if (typeof options.decide !== 'function') throw invalidArgument('decide', options.decide, 'a function')
  if (typeof options.connect !== 'function') throw invalidArgument('connect', options.connect, 'a function resolving with a connected descriptor')
  if (typeof options.identity !== 'string' || !options.identity.startsWith('spiffe://')) throw invalidArgument('identity', options.identity, 'a SPIFFE ID')
  return new NativeHboneServerImpl(options)
}

class NativeHboneServerImpl implements NativeHboneServer {
  readonly #addon: NativeAddon
  readonly #identities: IdentityManager
  readonly #identity: string
  readonly #decide: HboneServerOptions['decide']
  readonly #connect: NativeUpstreamConnector
  readonly #trustForwarded: (peerIdentity: string) => boolean
  readonly #connectTimeout: number
  readonly #settings: NativeSettings
  readonly #observers: {
    readonly logger: Logger
    readonly onTunnel: (record: HboneTunnelRecord) => void
    readonly onTunnelOpen: (request: HboneRequest) => void
    readonly onHandshakeFailure: (failure: HboneHandshakeFailure) => void
  }
  /** Every connection handed to the addon and not yet closed. */
  readonly #sessions = new Set<ServerSession>()
  /** Accepted sockets waiting for the first SVID. */
  readonly #waiting = new Set<Socket>()
  #established = 0
  #tunnels = 0
  readonly #closing = withoutListenerLimit(new AbortController())
  readonly #release: () => void
  #draining: Promise<void> | undefined
  #closed: Promise<void> | undefined

  constructor(options: NativeHboneServerOptions) {
    const windows = resolveWindows(options.windows, 'windows')
    const maxConcurrentStreams = positiveInteger(options.maxConcurrentStreams, 'maxConcurrentStreams', 1000, 2 ** 31 - 1)
    this.#addon = options.addon
    this.#identities = options.identities
    this.#identity = options.identity
    this.#decide = options.decide
    this.#connect = options.connect
    this.#trustForwarded = options.trustForwarded ?? (() => false)
    this.#connectTimeout = positiveInteger(options.connectTimeout, 'connectTimeout', 10_000)
    this.#settings = nativeSettings(windows, maxConcurrentStreams)
    this.#observers = {
      logger: options.logger ?? silentLogger,
      onTunnel: options.onTunnel ?? (() => {}),
      onTunnelOpen: options.onTunnelOpen ?? (() => {}),
      onHandshakeFailure: options.onHandshakeFailure ?? (() => {}),
    }
    // Presented while the server runs: renewed even when nothing calls get().
    this.#release = options.identities.retain(options.identity)
  }

  handle(socket: Socket): void {
    if (this.#closed !== undefined || this.#draining !== undefined) {
      socket.destroy()
      return
    }
    const svid = this.#identities.current(this.#identity)
    if (svid !== undefined) {
      this.#start(socket, svid)
      return
    }
    this.#waiting.add(socket)
    this.#identities.get(this.#identity, { signal: this.#closing.signal }).then(
      (current) => {
        if (this.#waiting.delete(socket)) this.#start(socket, current)
      },
      (err: Error) => {
        if (!this.#waiting.delete(socket)) return
        this.#handshakeFailure(remoteOf(socket), 'tls', err)
        socket.destroy()
      },
    )
  }

  stats(): HboneServerStats {
    return { connections: this.#sessions.size + this.#waiting.size, sessions: this.#established, tunnels: this.#tunnels }
  }

  drain(): Promise<void> {
    this.#draining ??= this.#drain()
    return this.#draining
  }

  async #drain(): Promise<void> {
    for (const socket of this.#waiting) socket.destroy()
    this.#waiting.clear()
    const sessions = [...this.#sessions]
    // GOAWAY: clients open new tunnels elsewhere; the addon closes each session once its tunnels ended.
    for (const state of sessions) this.#addon.shutdown(state.session)
    await Promise.all(sessions.map((state) => state.closed))
  }

  close(): Promise<void> {
    this.#closed ??= this.#close()
    return this.#closed
  }

  async #close(): Promise<void> {
    this.#closing.abort(new AmbientError(CoreErrorCode.Closed, 'HBONE server is closed'))
    this.#release()
    for (const socket of this.#waiting) socket.destroy()
    this.#waiting.clear()
    const sessions = [...this.#sessions]
    for (const state of sessions) this.#addon.destroy(state.session, 'HBONE server is closed')
    await Promise.all(sessions.map((state) => state.closed))
  }

  #start(socket: Socket, svid: X509Svid): void {
    if (socket.destroyed) return
    if (this.#closed !== undefined || this.#draining !== undefined) {
      socket.destroy()
      return
    }
    const address = remoteOf(socket)
    if (address === undefined) {
      socket.destroy()
      return
    }
    let context: NativeTlsContext
    try {
      context = nativeTlsContext(this.#addon, this.#identities, svid, 'server')
    } catch (err) {
      this.#handshakeFailure(address, 'tls', err as Error)
      socket.destroy()
      return
    }
    let fd: number
    try {
      fd = detachSocket(this.#addon, socket)
    } catch (err) {
      this.#observers.logger.debug({ err, peer: address }, 'HBONE connection could not be handed to the native data path')
      socket.destroy()
      return
    }
    const state = new ServerSession(address)
    try {
      state.session = this.#addon.serverSession(context, fd, this.#settings, (event, ...args) => this.#onEvent(state, event, args))
    } catch (err) {
      closeSync(fd)
      this.#handshakeFailure(address, 'tls', err as Error)
      return
    }
    this.#sessions.add(state)
  }

  #onEvent(state: ServerSession, event: NativeEvent, args: unknown[]): string | undefined {
    switch (event) {
      case NativeEvent.Handshake:
        return this.#onHandshake(state, args[0])
      case NativeEvent.Request:
        this.#onRequest(state, args[0] as number, args[1], args[2], args[3])
        return undefined
      case NativeEvent.StreamClose:
        this.#onStreamClose(state, args[0] as number, args)
        return undefined
      case NativeEvent.Close:
        this.#onClose(state, args[0] as string | null)
        return undefined
      default:
        return undefined
    }
  }

  #onHandshake(state: ServerSession, chain: unknown): string | undefined {
    try {
      state.peer = { identity: verifiedPeerIdentity(chain, this.#identities), address: state.address }
    } catch (err) {
      state.refused = true
      this.#handshakeFailure(state.address, 'identity', err as Error)
      return (err as Error).message
    }
    this.#established++
    return undefined
  }

  #onClose(state: ServerSession, reason: string | null): void {
    this.#sessions.delete(state)
    // The addon closes every stream first; whatever is left here is still being decided or connected.
    for (const stream of state.streams.values()) {
      stream.gone = true
      stream.attempt?.abort(new AmbientError(CoreErrorCode.Aborted, 'HBONE session closed before upstream connected'))
    }
    this.#tunnels -= state.streams.size
    state.streams.clear()
    if (state.peer !== undefined) this.#established--
    // A connection cut by drain or close while handshaking is no failure of the client's.
    else if (!state.refused && this.#closed === undefined && this.#draining === undefined) this.#handshakeFailure(state.address, ...handshakeFailureOf(reason))
    if (reason !== null) this.#observers.logger.debug({ peer: state.peer?.identity, address: state.address, reason }, 'HBONE session closed (native)')
    state.onClosed()
  }

  #onRequest(state: ServerSession, id: number, method: unknown, authority: unknown, flat: unknown): void {
    const peer = state.peer
    if (peer === undefined) {
      this.#addon.resetStream(state.session, id, h2.NGHTTP2_REFUSED_STREAM)
      return
    }
    const stream = new ServerStream(id, performance.now())
    state.streams.set(id, stream)
    this.#tunnels++
    this.#serve(state, peer, stream, method, authority, flat).catch((err: unknown) => {
      this.#observers.logger.error({ err, peer: peer.identity }, 'HBONE stream handling failed')
      this.#addon.resetStream(state.session, id, h2.NGHTTP2_INTERNAL_ERROR)
    })
  }

  #onStreamClose(state: ServerSession, id: number, args: unknown[]): void {
    const stream = state.streams.get(id)
    if (stream === undefined) return
    state.streams.delete(id)
    this.#tunnels--
    stream.gone = true
    const spliced = stream.spliced
    if (spliced === undefined) {
      // Still deciding or connecting: #serve reports it as cancelled. Answered ones were reported when answered.
      stream.attempt?.abort(new AmbientError(CoreErrorCode.Aborted, 'HBONE stream closed before upstream connected'))
      return
    }
    const [, outcome, bytesRead, bytesWritten, error] = args
    const result = spliceResultOf(outcome, bytesRead, bytesWritten, error)
    reportTunnel(this.#observers, state.peer!, stream.started, {
      status: 200,
      outcome: result.outcome,
      destination: spliced.destination,
      ...(spliced.policy === undefined ? {} : { policy: spliced.policy }),
      bytesReceived: result.socketBytesWritten,
      bytesSent: result.socketBytesRead,
      error: result.error,
    })
    spliced.tunnel.settle(result)
  }

  async #serve(state: ServerSession, peer: SessionPeer, stream: ServerStream, method: unknown, authority: unknown, flat: unknown): Promise<void> {
    const addon = this.#addon
    const raw = typeof authority === 'string' && authority !== '' ? authority : undefined
    const finish = (fields: TunnelRecordFields): void => reportTunnel(this.#observers, peer, stream.started, fields)
    const reject = (status: number, reason: string, extra: Partial<HboneTunnelRecord> = {}): void => {
      const answered = !stream.gone && addon.respond(state.session, stream.id, status)
      finish({ status: answered ? status : 0, outcome: answered ? 'rejected' : 'cancelled', reason, authority: raw, ...extra })
    }

    const destination = connectDestination(method, raw)
    if (typeof destination === 'string') return reject(400, destination)
    const request = buildRequest(headersOf(method, raw, flat), peer, destination, this.#trustForwarded(peer.identity))

    let decision: HboneDecision
    try {
      decision = await this.#decide(request)
    } catch (err) {
      this.#observers.logger.error({ err, peer: peer.identity, destination: raw }, 'HBONE decide hook threw')
      return reject(500, 'decide-failed', { destination, error: err as Error })
    }
    if (decision.action !== 'serve') {
      const refusal = refusalOf(decision, this.#observers.logger)
      return reject(refusal.status, refusal.reason, { destination, ...(refusal.policy === undefined ? {} : { policy: refusal.policy }) })
    }

    if (stream.gone) return finish({ status: 0, outcome: 'cancelled', destination })
    const attempt = new AbortController()
    const onClosing = (): void => attempt.abort(new AmbientError(CoreErrorCode.Aborted, 'HBONE server closed before upstream connected'))
    const timer = setTimeout(
      () => attempt.abort(new AmbientError(CoreErrorCode.Aborted, `upstream connect timed out after ${this.#connectTimeout} ms`)),
      this.#connectTimeout,
    )
    stream.attempt = attempt
    this.#closing.signal.addEventListener('abort', onClosing, { once: true })
    if (this.#closing.signal.aborted) onClosing()
    const tunnel = new NativeTunnel(addon, state.session, stream.id)
    let fd: number
    try {
      fd = await this.#connect(destination, { signal: attempt.signal, request, context: decision.context, tunnel })
    } catch (err) {
      if (stream.gone) return finish({ status: 0, outcome: 'cancelled', destination, error: err as Error })
      this.#observers.logger.debug({ err, destination: raw }, 'HBONE upstream connect failed')
      return reject(503, 'upstream-connect-failed', { destination, error: err as Error })
    } finally {
      clearTimeout(timer)
      stream.attempt = undefined
      this.#closing.signal.removeEventListener('abort', onClosing)
    }
    if (stream.gone) {
      addon.resetFd(fd)
      tunnel.settle({ outcome: 'stream-reset', socketBytesRead: 0, socketBytesWritten: 0 })
      return finish({ status: 0, outcome: 'cancelled', destination })
    }
    // The addon answers 200 and splices, or (the stream went away meanwhile) closes fd.
    if (!addon.splice(state.session, stream.id, fd)) {
      tunnel.settle({ outcome: 'stream-reset', socketBytesRead: 0, socketBytesWritten: 0 })
      return finish({ status: 0, outcome: 'cancelled', destination })
    }
    stream.spliced = { tunnel, destination, policy: decision.policy }
    report(this.#observers.logger, () => this.#observers.onTunnelOpen(request))
  }

  #handshakeFailure(peerAddress: SocketAddress | undefined, reason: HboneHandshakeFailure['reason'], error: Error): void {
    this.#observers.logger.debug({ peer: peerAddress, reason, err: error }, 'HBONE handshake failed')
    report(this.#observers.logger, () => this.#observers.onHandshakeFailure({ ...(peerAddress ? { peerAddress } : {}), reason, error }))
  }
}

/** The request's headers as Node's server gives them: lower-case names, pseudo-headers included, repeats joined. */
function headersOf(method: unknown, authority: string | undefined, flat: unknown): IncomingHttpHeaders {
  const headers: IncomingHttpHeaders = {}
  if (typeof method === 'string') headers[':method'] = method
  if (authority !== undefined) headers[':authority'] = authority
  const list = Array.isArray(flat) ? (flat as unknown[]) : []
  for (let i = 0; i + 1 < list.length; i += 2) {
    const name = String(list[i]).toLowerCase()
    const value = String(list[i + 1])
    const previous = headers[name]
    headers[name] = previous === undefined ? value : `${String(previous)}, ${value}`
  }
  return headers
}

/** Why a connection closed before its handshake was accepted, in `onHandshakeFailure`'s terms. */
function handshakeFailureOf(reason: string | null): [HboneHandshakeFailure['reason'], Error] {
  const message = reason ?? 'the connection closed before the TLS handshake finished'
  if (/ALPN|application protocol/i.test(message)) return ['alpn', new AmbientError(HboneErrorCode.Alpn, `client did not negotiate ALPN h2: ${message}`)]
  return ['tls', new Error(message)]
}
