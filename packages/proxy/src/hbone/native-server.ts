import { closeSync } from 'node:fs'
import { constants as h2 } from 'node:http2'
import {
  AmbientError,
  CoreErrorCode,
  invalidArgument,
  type SocketAddress,
} from '@ambientkit/core'
import type { IdentityManager, X509Svid } from '@ambientkit/identity'
import type {
  CarriedConnection,
  HboneHandshakeFailure,
  HboneServerStats,
  TransportServer,
  TransportServerOptions,
  TunnelResult,
} from '../transport/contract'
import { asDescriptor } from '../transport/connection'
import { headersOf, report, requestConfig, serveRequest, type RequestConfig, type RequestStream, type SessionPeer } from '../transport/request'
import { HboneErrorCode } from './errors'
import { NativeEvent, type NativeAddon, type NativeSession, type NativeSettings, type NativeTlsContext } from './native'
import { nativeTlsContext, verifiedPeerIdentity } from './native-tls'
import { nativeSettings, spliceResultOf } from './native-tunnel'
import { positiveInteger, resolveWindows } from './settings'

/** Options of {@link createNativeHboneServer}: a transport server's, and the loaded addon. Upstream connections must be descriptors. */
export interface NativeHboneServerOptions extends Omit<TransportServerOptions, 'addresses'> {
  /** The loaded addon (`nativeHbone()`). */
  readonly addon: NativeAddon
}

/** One accepted connection, from the handshake until the addon's `Close`. */
class ServerSession {
  session!: NativeSession
  /** Set once the handshake accepted the client. */
  peer: SessionPeer | undefined
  /** Set when the handshake refused the client (already reported). */
  refused = false
  readonly streams = new Map<number, NativeRequestStream>()
  readonly closed: Promise<void>
  onClosed!: () => void

  constructor(readonly address: SocketAddress) {
    this.closed = new Promise((resolve) => (this.onClosed = resolve))
  }
}

/** A `CONNECT` on one of the addon's streams, as the shared state machine drives it. */
class NativeRequestStream implements RequestStream {
  gone = false
  #goneListener: (() => void) | undefined
  #done: ((result: TunnelResult) => void) | undefined

  constructor(
    readonly addon: NativeAddon,
    readonly state: ServerSession,
    readonly id: number,
  ) {}

  onGone(listener: () => void): () => void {
    this.#goneListener = listener
    return () => (this.#goneListener = undefined)
  }

  respond(status: number): boolean {
    return !this.gone && this.addon.respond(this.state.session, this.id, status)
  }

  carry(upstream: CarriedConnection, done: (result: TunnelResult) => void): boolean {
    const fd = asDescriptor(upstream, 'the upstream connection')
    if (this.gone) {
      this.addon.resetFd(fd)
      return false
    }
    this.#done = done
    // The addon answers 200 and splices; a stream gone meanwhile on its thread closes fd and has its StreamClose on the way.
    if (this.addon.splice(this.state.session, this.id, fd)) return true
    this.#done = undefined
    return false
  }

  reset(code: number = h2.NGHTTP2_CONNECT_ERROR): void {
    if (!this.gone) this.addon.resetStream(this.state.session, this.id, code)
  }

  /** The stream closed (its `StreamClose`, or the session's `Close`): the state machine or the carried tunnel hears of it. */
  closed(result: TunnelResult): void {
    this.gone = true
    const gone = this.#goneListener
    this.#goneListener = undefined
    gone?.()
    const done = this.#done
    this.#done = undefined
    done?.(result)
  }
}

/**
 * Creates the native HBONE server: mutual TLS 1.3 and ALPN `h2` are the
 * addon's, the client's SVID is verified against the bundle of its own
 * trust domain, and each `CONNECT` goes through the state machine every
 * transport shares (the same answers and records as Node's server). The
 * tunnel's bytes never enter JavaScript. {@link createNativeTransport}
 * builds its servers with it.
 */
export function createNativeHboneServer(options: NativeHboneServerOptions): TransportServer {
  if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
  if (typeof options.identity !== 'string' || !options.identity.startsWith('spiffe://')) throw invalidArgument('identity', options.identity, 'a SPIFFE ID')
  return new NativeHboneServerImpl(options)
}

class NativeHboneServerImpl implements TransportServer {
  readonly #addon: NativeAddon
  readonly #identities: IdentityManager
  readonly #identity: string
  readonly #config: RequestConfig
  readonly #settings: NativeSettings
  /** Every connection handed to the addon and not yet closed. */
  readonly #sessions = new Set<ServerSession>()
  /** Accepted connections waiting for the first SVID. */
  readonly #waiting = new Map<number, SocketAddress | undefined>()
  #established = 0
  #tunnels = 0
  readonly #closing = new AbortController()
  readonly #release: () => void
  #draining: Promise<void> | undefined
  #closed: Promise<void> | undefined

  constructor(options: NativeHboneServerOptions) {
    const windows = resolveWindows(options.windows, 'windows')
    const maxConcurrentStreams = positiveInteger(options.maxConcurrentStreams, 'maxConcurrentStreams', 1000, 2 ** 31 - 1)
    this.#addon = options.addon
    this.#identities = options.identities
    this.#identity = options.identity
    this.#config = requestConfig(options, 'HBONE', this.#closing.signal, (upstream) => this.#addon.resetFd(asDescriptor(upstream, 'the upstream connection')))
    this.#settings = nativeSettings(windows, maxConcurrentStreams)
    // Presented while the server runs: renewed even when nothing calls get().
    this.#release = options.identities.retain(options.identity)
  }

  handle(connection: CarriedConnection, remote?: SocketAddress): void {
    const fd = asDescriptor(connection, 'the accepted connection')
    if (this.#closed !== undefined || this.#draining !== undefined) {
      this.#addon.resetFd(fd)
      return
    }
    const svid = this.#identities.current(this.#identity)
    if (svid !== undefined) {
      this.#start(fd, remote, svid)
      return
    }
    this.#waiting.set(fd, remote)
    this.#identities.get(this.#identity, { signal: this.#closing.signal }).then(
      (current) => {
        if (this.#waiting.delete(fd)) this.#start(fd, remote, current)
      },
      (err: Error) => {
        if (!this.#waiting.delete(fd)) return
        this.#handshakeFailure(remote, 'tls', err)
        this.#addon.resetFd(fd)
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
    this.#dropWaiting()
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
    this.#dropWaiting()
    const sessions = [...this.#sessions]
    for (const state of sessions) this.#addon.destroy(state.session, 'HBONE server is closed')
    await Promise.all(sessions.map((state) => state.closed))
  }

  #dropWaiting(): void {
    for (const fd of this.#waiting.keys()) this.#addon.resetFd(fd)
    this.#waiting.clear()
  }

  #start(fd: number, remote: SocketAddress | undefined, svid: X509Svid): void {
    if (this.#closed !== undefined || this.#draining !== undefined) {
      this.#addon.resetFd(fd)
      return
    }
    const address = remote ?? UNKNOWN_PEER
    let context: NativeTlsContext
    try {
      context = nativeTlsContext(this.#addon, this.#identities, svid, 'server')
    } catch (err) {
      this.#handshakeFailure(remote, 'tls', err as Error)
      this.#addon.resetFd(fd)
      return
    }
    const state = new ServerSession(address)
    try {
      state.session = this.#addon.serverSession(context, fd, this.#settings, (event, ...args) => this.#onEvent(state, event, args))
    } catch (err) {
      closeSync(fd)
      this.#handshakeFailure(remote, 'tls', err as Error)
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
      case NativeEvent.StreamClose: {
        const [id, outcome, bytesRead, bytesWritten, error] = args
        this.#onStreamClose(state, id as number, spliceResultOf(outcome, bytesRead, bytesWritten, error))
        return undefined
      }
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
    for (const stream of state.streams.values()) stream.closed(CANCELLED)
    this.#tunnels -= state.streams.size
    state.streams.clear()
    if (state.peer !== undefined) this.#established--
    // A connection cut by drain or close while handshaking is no failure of the client's.
    else if (!state.refused && this.#closed === undefined && this.#draining === undefined) this.#handshakeFailure(state.address, ...handshakeFailureOf(reason))
    if (reason !== null) this.#config.logger.debug({ peer: state.peer?.identity, address: state.address, reason }, 'HBONE session closed (native)')
    state.onClosed()
  }

  #onRequest(state: ServerSession, id: number, method: unknown, authority: unknown, flat: unknown): void {
    const peer = state.peer
    if (peer === undefined) {
      this.#addon.resetStream(state.session, id, h2.NGHTTP2_REFUSED_STREAM)
      return
    }
    const stream = new NativeRequestStream(this.#addon, state, id)
    state.streams.set(id, stream)
    this.#tunnels++
    const headers = headersOf(method, authority, Array.isArray(flat) ? (flat as unknown[]) : [])
    void serveRequest(this.#config, stream, peer, { method, authority, headers, started: performance.now() })
  }

  #onStreamClose(state: ServerSession, id: number, result: TunnelResult): void {
    const stream = state.streams.get(id)
    if (stream === undefined) return
    state.streams.delete(id)
    this.#tunnels--
    stream.closed(result)
  }

  #handshakeFailure(peerAddress: SocketAddress | undefined, reason: HboneHandshakeFailure['reason'], error: Error): void {
    this.#config.logger.debug({ peer: peerAddress, reason, err: error }, 'HBONE handshake failed')
    report(this.#config.logger, () => this.#config.onHandshakeFailure({ ...(peerAddress ? { peerAddress } : {}), reason, error }))
  }
}

/** The peer of a connection handed over without its address. */
const UNKNOWN_PEER: SocketAddress = Object.freeze({ address: '0.0.0.0', port: 0, family: 4 })

/** What a stream that closed with its session, before carrying anything, reports. */
const CANCELLED: TunnelResult = Object.freeze({ outcome: 'stream-reset', socketBytesRead: 0, socketBytesWritten: 0 })

/** Why a connection closed before its handshake was accepted, in `onHandshakeFailure`'s terms. */
function handshakeFailureOf(reason: string | null): [HboneHandshakeFailure['reason'], Error] {
  const message = reason ?? 'the connection closed before the TLS handshake finished'
  if (/ALPN|application protocol/i.test(message)) return ['alpn', new AmbientError(HboneErrorCode.Alpn, `client did not negotiate ALPN h2: ${message}`)]
  return ['tls', new Error(message)]
}
