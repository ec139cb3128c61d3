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
import { certificateNotAfter, type PendingHandshake } from '../transport/limits'
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
  /** Set when the handshake refused the client, or it timed out (already reported). */
  refused = false
  /** Counted against the pending handshake limits until the handshake ended. */
  handshake: PendingHandshake | undefined
  /** When the local SVID of the handshake expires (milliseconds since the epoch). */
  localNotAfter = Number.POSITIVE_INFINITY
  /** Cancels the session's end at its certificates' expiry. */
  stopExpiry: () => void = () => {}
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
  readonly #waiting = new Map<number, ServerSession>()
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
    this.#settings = nativeSettings(windows, maxConcurrentStreams, this.#config.limits.tunnelTimeouts)
    // Presented while the server runs: renewed even when nothing calls get().
    this.#release = options.identities.retain(options.identity)
  }

  handle(connection: CarriedConnection, remote?: SocketAddress): void {
    const fd = asDescriptor(connection, 'the accepted connection')
    if (this.#closed !== undefined || this.#draining !== undefined) {
      this.#addon.resetFd(fd)
      return
    }
    const state = new ServerSession(remote ?? UNKNOWN_PEER)
    const admitted = this.#config.limits.admit(remote, (error) => this.#timedOut(fd, state, error))
    if (!('settle' in admitted)) {
      this.#handshakeFailure(remote, admitted.reason, admitted.error)
      this.#addon.resetFd(fd)
      return
    }
    state.handshake = admitted
    const svid = this.#identities.current(this.#identity)
    if (svid !== undefined) {
      this.#start(fd, state, svid)
      return
    }
    this.#waiting.set(fd, state)
    this.#identities.get(this.#identity, { signal: this.#closing.signal }).then(
      (current) => {
        if (this.#waiting.delete(fd)) this.#start(fd, state, current)
      },
      (err: Error) => {
        if (!this.#waiting.delete(fd)) return
        admitted.settle()
        this.#handshakeFailure(remote, 'tls', err)
        this.#addon.resetFd(fd)
      },
    )
  }

  /** The handshake timeout of a connection still waiting for the SVID or handshaking in the addon. */
  #timedOut(fd: number, state: ServerSession, error: Error): void {
    if (this.#waiting.delete(fd)) {
      this.#handshakeFailure(state.address, 'timeout', error)
      this.#addon.resetFd(fd)
      return
    }
    if (!this.#sessions.has(state) || state.peer !== undefined || state.refused) return
    state.refused = true
    this.#handshakeFailure(state.address, 'timeout', error)
    this.#addon.destroy(state.session, error.message)
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
    // One still in its TLS handshake gets it once accepted (#onHandshake): cut now, the handshake
    // would fail its client's CONNECT, which a GOAWAY only refuses (sent again elsewhere).
    for (const state of sessions) if (state.peer !== undefined) this.#addon.shutdown(state.session)
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
    for (const [fd, state] of this.#waiting) {
      state.handshake?.settle()
      this.#addon.resetFd(fd)
    }
    this.#waiting.clear()
  }

  #start(fd: number, state: ServerSession, svid: X509Svid): void {
    if (this.#closed !== undefined || this.#draining !== undefined) {
      state.handshake?.settle()
      this.#addon.resetFd(fd)
      return
    }
    let context: NativeTlsContext
    try {
      context = nativeTlsContext(this.#addon, this.#identities, svid, 'server')
    } catch (err) {
      state.handshake?.settle()
      this.#handshakeFailure(state.address, 'tls', err as Error)
      this.#addon.resetFd(fd)
      return
    }
    state.localNotAfter = svid.notAfter.getTime()
    try {
      state.session = this.#addon.serverSession(context, fd, this.#settings, (event, ...args) => this.#onEvent(state, event, args))
    } catch (err) {
      state.handshake?.settle()
      closeSync(fd)
      this.#handshakeFailure(state.address, 'tls', err as Error)
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
    state.handshake?.settle()
    let identity: string
    try {
      identity = verifiedPeerIdentity(chain, this.#identities)
    } catch (err) {
      state.refused = true
      this.#handshakeFailure(state.address, 'identity', err as Error)
      return (err as Error).message
    }
    const refused = this.#config.limits.openSession(identity)
    if (refused !== undefined) {
      state.refused = true
      this.#handshakeFailure(state.address, refused.reason, refused.error)
      return refused.error.message
    }
    state.peer = { identity, address: state.address }
    this.#established++
    if (this.#draining !== undefined) this.#addon.shutdown(state.session)
    // No new tunnels once a certificate of the handshake has expired; live ones may finish within the drain deadline.
    const notAfter = Math.min(state.localNotAfter, certificateNotAfter(Array.isArray(chain) ? (chain[0] as Buffer | undefined) : undefined))
    state.stopExpiry = this.#config.limits.expireAt(
      notAfter,
      () => this.#addon.shutdown(state.session),
      () => this.#addon.destroy(state.session, 'the certificate of the session expired and its tunnels outlived the drain deadline'),
    )
    return undefined
  }

  #onClose(state: ServerSession, reason: string | null): void {
    this.#sessions.delete(state)
    // The addon closes every stream first; whatever is left here is still being decided or connected.
    for (const stream of state.streams.values()) stream.closed(CANCELLED)
    this.#tunnels -= state.streams.size
    state.streams.clear()
    state.handshake?.settle()
    state.stopExpiry()
    if (state.peer !== undefined) {
      this.#established--
      this.#config.limits.closeSession(state.peer.identity)
    }
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
