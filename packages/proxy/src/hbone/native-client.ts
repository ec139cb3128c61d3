import { setMaxListeners } from 'node:events'
import { closeSync } from 'node:fs'
import { constants as h2 } from 'node:http2'
import type { Socket } from 'node:net'
import {
  AmbientError,
  CoreErrorCode,
  abortError,
  formatSocketAddress,
  invalidArgument,
  silentLogger,
  throwIfAborted,
  type AbortOptions,
  type Closable,
  type Logger,
  type SocketAddress,
} from '@ambientkit/core'
import type { IdentityManager } from '@ambientkit/identity'
import { checkExpected, connectFailed, requestHeaders, type HboneClientOptions, type HboneSessionStats, type SocketFactoryOptions } from './client'
import { HBONE_PORT } from './constants'
import { HboneErrorCode } from './errors'
import { NativeEvent, type NativeAddon, type NativeSession, type NativeSettings, type NativeTlsContext } from './native'
import { nativeTlsContext, verifiedPeerIdentity } from './native-tls'
import { NativeTunnel, detachSocket, nativeSettings, spliceResultOf } from './native-tunnel'
import { SessionPool, establishWithin } from './pool'
import { positiveInteger, resolveWindows } from './settings'

/**
 * Opens the TCP connection of a native HBONE session and resolves with its
 * connected descriptor, which the client owns from then on. The workload
 * proxy passes one that connects inside the pod's network namespace with
 * mark 0x539 (`Netns.connectFd`).
 */
export type NativeSocketFactory = (address: SocketAddress, options: SocketFactoryOptions) => Promise<number>

/**
 * Options of {@link createNativeHboneClient}: the Node client's pooling,
 * keepalive, timeouts and windows, with the same defaults; TLS comes from
 * `identities` and the TCP connection from `socketFactory` as a descriptor.
 */
export interface NativeHboneClientOptions
  extends Pick<HboneClientOptions, 'maxStreamsPerSession' | 'idleTimeout' | 'keepaliveInterval' | 'keepaliveTimeout' | 'sessionTimeout' | 'windows' | 'logger'> {
  /** The loaded addon (`nativeHbone()`). */
  readonly addon: NativeAddon
  /** Holds the SVID each session presents (its source identity's) and the bundles servers are verified with. */
  readonly identities: IdentityManager
  /** Opens the TCP connection to the HBONE peer. */
  readonly socketFactory: NativeSocketFactory
}

/** Options of {@link NativeHboneClient.open}. */
export interface NativeOpenOptions extends AbortOptions {
  /** The source identity: its SVID is presented, and it is part of the pool key. */
  readonly identity: string
  /** SPIFFE IDs the HBONE server may present (at least one). */
  readonly expectedIdentities: readonly string[]
  /** The source IP: passed to the socket factory and part of the pool key. */
  readonly sourceAddress?: string
  /** The HBONE peer. Default `<destination ip>:15008`. */
  readonly via?: SocketAddress
  /** Extra request headers. Pseudo-headers are refused. */
  readonly headers?: Readonly<Record<string, string>>
}

/** A pooled client of the native data path: the outbound half of HBONE, bytes never in JavaScript. */
export interface NativeHboneClient extends Closable {
  /**
   * Carries `app` through a tunnel to `destination`: takes (or opens) a
   * pooled session, then hands `app` over to the addon (a descriptor as it
   * is; a socket's descriptor is duplicated and the socket destroyed: it
   * emits `close`) and sends `CONNECT`. Resolves once the server answered
   * 200; the tunnel then reports its end through {@link NativeTunnel.onClose}.
   *
   * `app` must be a descriptor (from the addon's `accept`) or a socket Node
   * never read from (accepted with `pauseOnConnect`). A descriptor is the
   * client's from the call on: whenever the promise rejects, its connection
   * has been reset. A socket is untouched when the promise rejects before
   * the handover; after it, the addon has reset the connection.
   * Rejects as `HboneClient.connect` does: `ERR_AMBIENT_HBONE_STATUS`
   * (`details.status`), `ERR_AMBIENT_HBONE_IDENTITY_MISMATCH`,
   * `ERR_AMBIENT_HBONE_CONNECT_FAILED`, `ERR_AMBIENT_HBONE_STREAM`,
   * `ERR_AMBIENT_ABORTED` and `ERR_AMBIENT_CLOSED`; and, as it does, sends
   * a CONNECT the server did not process once more on another session.
   */
  open(app: Socket | number, destination: SocketAddress, options: NativeOpenOptions): Promise<NativeTunnel>
  /** The pooled sessions. */
  stats(): readonly HboneSessionStats[]
  /** Destroys every session (resetting their tunnels) and resolves once they are closed. Idempotent. */
  close(): Promise<void>
}

interface ClientConfig {
  readonly addon: NativeAddon
  readonly identities: IdentityManager
  readonly socketFactory: NativeSocketFactory
  readonly maxStreams: number
  readonly idleTimeout: number
  readonly keepaliveInterval: number
  readonly keepaliveTimeout: number
  readonly sessionTimeout: number
  readonly settings: NativeSettings
  readonly logger: Logger
}

/**
 * Creates the native HBONE client: sessions pooled exactly as
 * `createHboneClient` pools them (source identity, expected identities,
 * HBONE peer, source address), each carrying at most
 * `maxStreamsPerSession` tunnels, kept alive with PINGs (and destroyed when
 * they go unanswered), and shut down after `idleTimeout` without tunnels. A
 * session that received GOAWAY takes no new tunnels.
 */
export function createNativeHboneClient(options: NativeHboneClientOptions): NativeHboneClient {
  if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
  if (typeof options.socketFactory !== 'function') throw invalidArgument('socketFactory', options.socketFactory, 'a function resolving with a connected descriptor')
  const maxStreams = positiveInteger(options.maxStreamsPerSession, 'maxStreamsPerSession', 100, 2 ** 31 - 1)
  return new NativeHboneClientImpl({
    addon: options.addon,
    identities: options.identities,
    socketFactory: options.socketFactory,
    maxStreams,
    idleTimeout: positiveInteger(options.idleTimeout, 'idleTimeout', 300_000),
    keepaliveInterval: positiveInteger(options.keepaliveInterval, 'keepaliveInterval', 10_000),
    keepaliveTimeout: positiveInteger(options.keepaliveTimeout, 'keepaliveTimeout', 20_000),
    sessionTimeout: positiveInteger(options.sessionTimeout, 'sessionTimeout', 10_000),
    // The last value bounds streams the server might push to us, which HBONE never does.
    settings: nativeSettings(resolveWindows(options.windows, 'windows'), maxStreams),
    logger: options.logger ?? silentLogger,
  })
}

class NativeHboneClientImpl implements NativeHboneClient {
  readonly #config: ClientConfig
  readonly #pool = new SessionPool<PooledSession>()
  /** Every session not yet closed, pooled or still being established. */
  readonly #sessions = new Set<PooledSession>()
  readonly #closing = new AbortController()
  #closed: Promise<void> | undefined

  constructor(config: ClientConfig) {
    // Every session being opened listens on it: there is no meaningful limit.
    setMaxListeners(0, this.#closing.signal)
    this.#config = config
  }

  async open(app: Socket | number, destination: SocketAddress, options: NativeOpenOptions): Promise<NativeTunnel> {
    if (typeof app !== 'number') return this.#open(app, destination, options)
    // A descriptor is never handed back: a failure before the handover resets it here.
    let handedOver = false
    try {
      return await this.#open(app, destination, options, () => (handedOver = true))
    } catch (err) {
      if (!handedOver) this.#config.addon.resetFd(app)
      throw err
    }
  }

  async #open(app: Socket | number, destination: SocketAddress, options: NativeOpenOptions, onHandover?: () => void): Promise<NativeTunnel> {
    if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
    const { signal } = options
    throwIfAborted(signal, 'HBONE connect')
    if (this.#closed !== undefined) throw new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed')
    if (typeof options.identity !== 'string' || !options.identity.startsWith('spiffe://')) {
      throw invalidArgument('identity', options.identity, 'the source SPIFFE ID')
    }
    const authority = formatSocketAddress(destination)
    const via = options.via ?? { address: destination.address, port: HBONE_PORT, family: destination.family }
    const expected = checkExpected(options.expectedIdentities)
    const headers = flatHeaders(authority, options.headers)
    const key = [options.identity, expected.join(','), formatSocketAddress(via), options.sourceAddress ?? ''].join('|')

    const acquire = (): Promise<PooledSession> => this.#pool.acquire(key, () => this.#openSession(key, via, expected, options), signal, () => this.#closed !== undefined)
    const session = await acquire()
    // A slot of the session is ours: released on every way out that opens no stream.
    let fd: number
    try {
      if (this.#closed !== undefined) throw new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed')
      throwIfAborted(signal, 'HBONE connect')
      if (typeof app === 'number') fd = app
      else if (app.destroyed) throw new AmbientError(CoreErrorCode.Aborted, `HBONE connect ${authority}: the application connection closed first`)
      else fd = detachSocket(this.#config.addon, app)
    } catch (err) {
      session.release()
      throw err
    }
    onHandover?.()
    try {
      return await session.request(fd, authority, headers, signal)
    } catch (err) {
      if (!(err instanceof StreamRefused)) throw err
      // The server never processed it, or it was never sent (a session going away as we chose
      // it): nothing reached the destination, so once more on a session that is not going away.
      return this.#retry(err, acquire, authority, headers, signal)
    }
  }

  /** The second and last try of a refused CONNECT, with the socket the addon handed back (ours until it is handed over again). */
  async #retry(refused: StreamRefused, acquire: () => Promise<PooledSession>, authority: string, headers: readonly string[], signal: AbortSignal | undefined): Promise<NativeTunnel> {
    const addon = this.#config.addon
    let session: PooledSession
    try {
      if (this.#closed !== undefined) throw new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed')
      throwIfAborted(signal, 'HBONE connect')
      session = await acquire()
    } catch (err) {
      addon.resetFd(refused.fd)
      throw err
    }
    this.#config.logger.debug({ authority, reason: refused.message }, 'HBONE CONNECT refused before processing; trying another session')
    try {
      return await session.request(refused.fd, authority, headers, signal)
    } catch (err) {
      if (!(err instanceof StreamRefused)) throw err
      addon.resetFd(err.fd)
      throw new AmbientError(HboneErrorCode.Stream, `HBONE CONNECT ${authority} was refused twice before any processing: ${err.message}`, { details: { authority } })
    }
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
    await Promise.all([...this.#sessions].map((session) => session.destroy('HBONE client is closed')))
    this.#pool.clear()
  }

  #openSession(key: string, via: SocketAddress, expected: readonly string[], options: NativeOpenOptions): Promise<PooledSession> {
    return establishWithin(this.#config.sessionTimeout, this.#closing.signal, (signal) => this.#establish(key, via, expected, options, signal))
  }

  async #establish(key: string, via: SocketAddress, expected: readonly string[], options: NativeOpenOptions, signal: AbortSignal): Promise<PooledSession> {
    const config = this.#config
    const peer = formatSocketAddress(via)
    let context: NativeTlsContext
    let fd: number
    try {
      // The SVID first: no connection is held open while the CA answers.
      const svid = await config.identities.get(options.identity, { signal })
      context = nativeTlsContext(config.addon, config.identities, svid, 'client')
      fd = await config.socketFactory(via, { signal, identity: options.identity, ...(options.sourceAddress === undefined ? {} : { sourceAddress: options.sourceAddress }) })
    } catch (err) {
      throw connectFailed(peer, err, signal)
    }
    if (signal.aborted) {
      closeSync(fd)
      throw connectFailed(peer, signal.reason, signal)
    }
    const session = new PooledSession(config, peer, expected, () => this.#pool.remove(key, session), () => this.#sessions.delete(session))
    try {
      session.start(context, fd)
    } catch (err) {
      closeSync(fd)
      throw connectFailed(peer, err, signal)
    }
    this.#sessions.add(session)
    await session.established(signal)
    if (this.#closed !== undefined) {
      void session.destroy('HBONE client is closed')
      throw new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed')
    }
    this.#pool.add(key, session)
    session.pooled()
    config.logger.debug({ peer, identity: session.peerIdentity, key }, 'HBONE session opened (native)')
    return session
  }
}

/**
 * A CONNECT the server never processed, or that was never sent: nothing
 * reached the destination. `fd`, the application's socket, came back from
 * the addon untouched; whoever catches this owns it.
 */
class StreamRefused extends AmbientError {
  constructor(
    readonly fd: number,
    authority: string,
    reason: string,
  ) {
    super(HboneErrorCode.Stream, `HBONE CONNECT ${authority} was not processed: ${reason}`, { details: { authority } })
  }
}

/** A stream of a session: its tunnel, and until the response the caller waiting for it. */
class ClientStream {
  pending: { resolve: (tunnel: NativeTunnel) => void; reject: (err: Error) => void; signal?: AbortSignal; onAbort?: () => void } | undefined

  constructor(
    readonly tunnel: NativeTunnel,
    readonly authority: string,
  ) {}

  /** Settles the caller's promise (once) and forgets it. */
  answer(err?: Error): void {
    const pending = this.pending
    if (pending === undefined) return
    this.pending = undefined
    if (pending.onAbort !== undefined) pending.signal?.removeEventListener('abort', pending.onAbort)
    if (err === undefined) pending.resolve(this.tunnel)
    else pending.reject(err)
  }
}

/** One native session: its handshake, its streams, keepalive, and leaving the pool when idle, told to go away, or closed. */
class PooledSession {
  peerIdentity = ''
  /** Slots taken: streams open and callers about to open one. */
  streams = 0
  #session: NativeSession | undefined
  readonly #config: ClientConfig
  readonly #peer: string
  readonly #expected: readonly string[]
  readonly #removed: () => void
  readonly #forget: () => void
  readonly #streams = new Map<number, ClientStream>()
  #usable = true
  #closed = false
  /** The server's SETTINGS_MAX_CONCURRENT_STREAMS, once its SETTINGS arrived (as the Node client honours it). */
  #peerMaxStreams = Number.POSITIVE_INFINITY
  #keepalive: NodeJS.Timeout | undefined
  #pingSentAt: number | undefined
  #idle: NodeJS.Timeout | undefined
  /** Until the handshake is decided: how the caller establishing the session hears of it. */
  #handshake: { resolve: () => void; reject: (err: Error) => void } | undefined
  #handshakeFailure: Error | undefined
  readonly #closedPromise: Promise<void>
  #onClosed!: () => void

  constructor(config: ClientConfig, peer: string, expected: readonly string[], removed: () => void, forget: () => void) {
    this.#config = config
    this.#peer = peer
    this.#expected = expected
    this.#removed = removed
    this.#forget = forget
    this.#closedPromise = new Promise((resolve) => (this.#onClosed = resolve))
  }

  /** Starts the TLS handshake on `fd`, which the addon owns once this returned. */
  start(context: NativeTlsContext, fd: number): void {
    this.#session = this.#config.addon.clientSession(context, fd, this.#config.settings, (event, ...args) => this.#onEvent(event, args))
  }

  /**
   * Resolves once the server's identity was accepted and its SETTINGS arrived (so that its
   * SETTINGS_MAX_CONCURRENT_STREAMS is known before the first stream); destroys the session
   * when `signal` aborts first.
   */
  established(signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        const reason = signal.reason as Error
        this.#failHandshake(new AmbientError(HboneErrorCode.ConnectFailed, `HBONE TLS handshake with ${this.#peer} failed: ${reason.message}`, {
          cause: reason,
          details: { peer: this.#peer },
        }))
        this.#config.addon.destroy(this.#session!, reason.message)
      }
      this.#handshake = {
        resolve: () => {
          signal.removeEventListener('abort', onAbort)
          resolve()
        },
        reject: (err) => {
          signal.removeEventListener('abort', onAbort)
          reject(err)
        },
      }
      if (signal.aborted) onAbort()
      else signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** In the pool now: keepalive and the idle timer run. */
  pooled(): void {
    if (this.#closed) return
    this.#keepalive = setInterval(() => this.#ping(), this.#config.keepaliveInterval).unref()
    this.#armIdle()
  }

  hasRoom(): boolean {
    return this.#usable && !this.#closed && this.streams < Math.min(this.#config.maxStreams, this.#peerMaxStreams)
  }

  /** Takes a stream slot (synchronously, so concurrent callers count each other). */
  reserve(): void {
    this.streams++
    clearTimeout(this.#idle)
    this.#idle = undefined
  }

  /** Gives a slot back. */
  release(): void {
    this.streams--
    this.#armIdle()
  }

  /** Sends `CONNECT` on a reserved slot with `fd` (the addon's from here on) as the tunnel's socket. */
  request(fd: number, authority: string, headers: readonly string[], signal: AbortSignal | undefined): Promise<NativeTunnel> {
    const addon = this.#config.addon
    const session = this.#session!
    const id = addon.open(session, fd, authority, headers)
    if (id < 0) {
      this.release()
      return Promise.reject(new AmbientError(HboneErrorCode.Stream, `HBONE CONNECT ${authority} could not be sent: the session is closing`, { details: { authority } }))
    }
    const stream = new ClientStream(new NativeTunnel(addon, session, id), authority)
    this.#streams.set(id, stream)
    return new Promise((resolve, reject) => {
      stream.pending = { resolve, reject }
      if (signal === undefined) return
      const onAbort = (): void => {
        stream.answer(abortError(signal, 'HBONE connect'))
        // Its StreamClose gives the slot back.
        addon.resetStream(session, id, h2.NGHTTP2_CANCEL)
      }
      stream.pending.signal = signal
      stream.pending.onAbort = onAbort
      if (signal.aborted) onAbort()
      else signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** Resets every tunnel and closes the connection; resolves once the session is closed. */
  destroy(reason: string): Promise<void> {
    this.#retire()
    if (!this.#closed && this.#session !== undefined) this.#config.addon.destroy(this.#session, reason)
    return this.#closedPromise
  }

  #onEvent(event: NativeEvent, args: unknown[]): string | undefined {
    switch (event) {
      case NativeEvent.Handshake:
        return this.#onHandshake(args[0])
      case NativeEvent.Response:
        this.#onResponse(args[0] as number, args[1] as number)
        return undefined
      case NativeEvent.StreamClose:
        this.#onStreamClose(args[0] as number, args)
        return undefined
      case NativeEvent.PingAck:
        this.#pingSentAt = undefined
        return undefined
      case NativeEvent.Settings:
        this.#onSettings(args[0] as number)
        return undefined
      case NativeEvent.GoAway:
        // As Node's client: no new tunnels here, and the session closes once its tunnels have.
        this.#retire()
        this.#config.addon.shutdown(this.#session!)
        return undefined
      case NativeEvent.Close:
        this.#onClose(args[0] as string | null)
        return undefined
      default:
        return undefined
    }
  }

  #onHandshake(chain: unknown): string | undefined {
    try {
      this.peerIdentity = verifiedPeerIdentity(chain, this.#config.identities, this.#expected)
    } catch (err) {
      const message = (err as Error).message
      this.#failHandshake(new AmbientError(HboneErrorCode.IdentityMismatch, `HBONE peer ${this.#peer} was refused: ${message}`, {
        cause: err,
        details: { peer: this.#peer },
      }))
      return message
    }
    // Accepted: the session is established once the server's SETTINGS arrive.
    return undefined
  }

  #onSettings(maxConcurrentStreams: number): void {
    this.#peerMaxStreams = maxConcurrentStreams
    const handshake = this.#handshake
    this.#handshake = undefined
    handshake?.resolve()
  }

  #failHandshake(err: Error): void {
    this.#handshakeFailure ??= err
    const handshake = this.#handshake
    this.#handshake = undefined
    handshake?.reject(this.#handshakeFailure)
  }

  #closedBeforeUse(reason?: string | null): AmbientError {
    return this.#handshakeFailure instanceof AmbientError
      ? this.#handshakeFailure
      : new AmbientError(HboneErrorCode.ConnectFailed, `HBONE TLS handshake with ${this.#peer} failed: ${reason ?? 'the connection closed'}`, {
          details: { peer: this.#peer },
        })
  }

  #onResponse(id: number, status: number): void {
    const stream = this.#streams.get(id)
    if (stream === undefined) return
    if (status === 200) {
      stream.answer()
      return
    }
    // The addon resets the stream and the application's connection; StreamClose follows.
    stream.answer(new AmbientError(HboneErrorCode.Status, `HBONE CONNECT ${stream.authority} was answered with status ${status}`, {
      details: { status, authority: stream.authority },
    }))
  }

  #onStreamClose(id: number, args: unknown[]): void {
    const [, outcome, bytesRead, bytesWritten, error, , handedBack] = args
    const stream = this.#streams.get(id)
    const fd = typeof handedBack === 'number' && handedBack >= 0 ? handedBack : undefined
    if (stream === undefined) {
      if (fd !== undefined) this.#config.addon.resetFd(fd)
      return
    }
    this.#streams.delete(id)
    if (fd !== undefined && stream.pending !== undefined) {
      stream.answer(new StreamRefused(fd, stream.authority, typeof error === 'string' ? error : 'refused'))
    } else if (fd !== undefined) {
      // The caller gave up already (aborted): the application's connection is reset.
      this.#config.addon.resetFd(fd)
    }
    if (stream.pending !== undefined) {
      stream.answer(new AmbientError(HboneErrorCode.Stream, `HBONE CONNECT ${stream.authority} was closed before a response (${typeof error === 'string' ? error : 'reset'})`, {
        details: { authority: stream.authority },
      }))
    }
    stream.tunnel.settle(spliceResultOf(outcome, bytesRead, bytesWritten, error))
    this.release()
  }

  #onClose(reason: string | null): void {
    this.#closed = true
    this.#retire()
    clearInterval(this.#keepalive)
    clearTimeout(this.#idle)
    this.#failHandshake(this.#closedBeforeUse(reason))
    // A CONNECT that reached the session's thread after it closed gets its StreamClose (Refused) after this.
    if (reason !== null) this.#config.logger.debug({ peer: this.#peer, identity: this.peerIdentity, reason }, 'HBONE session closed (native)')
    this.#forget()
    this.#onClosed()
  }

  #ping(): void {
    if (this.#closed) return
    const now = performance.now()
    if (this.#pingSentAt === undefined) {
      this.#pingSentAt = now
      this.#config.addon.ping(this.#session!)
    } else if (now - this.#pingSentAt >= this.#config.keepaliveTimeout) {
      this.#config.logger.warn({ peer: this.#peer, identity: this.peerIdentity }, 'HBONE session did not answer PING; destroying it')
      void this.destroy('HBONE session keepalive timed out')
    }
  }

  #armIdle(): void {
    if (this.streams > 0 || !this.#usable || this.#closed || this.#keepalive === undefined) return
    clearTimeout(this.#idle)
    this.#idle = setTimeout(() => {
      this.#retire()
      // GOAWAY, then the addon closes the session: it has no streams.
      this.#config.addon.shutdown(this.#session!)
    }, this.#config.idleTimeout).unref()
  }

  #retire(): void {
    if (!this.#usable) return
    this.#usable = false
    this.#removed()
  }
}

/** The extra request headers as the addon takes them: [name, value, ...], pseudo-headers left to it. */
function flatHeaders(authority: string, extra: Readonly<Record<string, string>> | undefined): string[] {
  const flat: string[] = []
  for (const [name, value] of Object.entries(requestHeaders(authority, extra))) {
    if (!name.startsWith(':')) flat.push(name, value as string)
  }
  return flat
}
