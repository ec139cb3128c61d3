import { setMaxListeners } from 'node:events'
import { closeSync } from 'node:fs'
import { constants as h2 } from 'node:http2'
import {
  AmbientError,
  CoreErrorCode,
  abortError,
  formatSocketAddress,
  HBONE_PORT,
  invalidArgument,
  silentLogger,
  throwIfAborted,
  type SocketAddress,
} from '@ambientkit/core'
import type { IdentityManager } from '@ambientkit/identity'
import type { CarriedConnection, HboneSessionStats, OpenOptions, SessionConnectOptions, TransportClient, TransportClientOptions } from '../transport/contract'
import { asDescriptor } from '../transport/connection'
import { certificateNotAfter } from '../transport/limits'
import { PooledSession, SessionPool, establishWithin, sendAtMostTwice, type SessionPolicy } from '../transport/pool'
import { checkExpected, connectFailed, requestHeaders } from './client'
import { HboneErrorCode } from './errors'
import { NativeEvent, type NativeAddon, type NativeSession, type NativeSettings, type NativeTlsContext } from './native'
import { nativeTlsContext, verifiedPeerIdentity } from './native-tls'
import { NativeTunnel, nativeSettings, spliceResultOf } from './native-tunnel'
import { positiveInteger, resolveWindows } from './settings'

/**
 * Opens the TCP connection of a native HBONE session and resolves with its
 * connected descriptor, which the client owns from then on. The workload
 * proxy passes one that connects inside the pod's network namespace with
 * mark 0x539 (`NetnsSockets.connectFd`).
 */
export type NativeSocketFactory = (address: SocketAddress, options: SessionConnectOptions) => Promise<CarriedConnection>

/** Options of {@link createNativeHboneClient}: a transport client's (sessions connected by descriptor), and the loaded addon. */
export interface NativeHboneClientOptions extends Omit<TransportClientOptions, 'connectSession'> {
  /** The loaded addon (`nativeHbone()`). */
  readonly addon: NativeAddon
  /** Opens the TCP connection to the HBONE peer: a descriptor. */
  readonly connectSession: NativeSocketFactory
}

interface ClientConfig extends SessionPolicy {
  readonly addon: NativeAddon
  readonly identities: IdentityManager
  readonly connectSession: NativeSocketFactory
  readonly sessionTimeout: number
  readonly settings: NativeSettings
}

/**
 * Creates the native HBONE client: sessions pooled exactly as
 * `createHboneClient` pools them (source identity, expected identities,
 * HBONE peer, source address), each carrying at most
 * `maxStreamsPerSession` tunnels, kept alive with PINGs (and destroyed when
 * they go unanswered), and shut down after `idleTimeout` without tunnels. A
 * session that received GOAWAY takes no new tunnels.
 */
export function createNativeHboneClient(options: NativeHboneClientOptions): TransportClient {
  if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
  if (typeof options.connectSession !== 'function') throw invalidArgument('connectSession', options.connectSession, 'a function resolving with a connected descriptor')
  const maxStreams = positiveInteger(options.maxStreamsPerSession, 'maxStreamsPerSession', 100, 2 ** 31 - 1)
  return new NativeHboneClientImpl({
    addon: options.addon,
    identities: options.identities,
    connectSession: options.connectSession,
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

class NativeHboneClientImpl implements TransportClient {
  readonly #config: ClientConfig
  readonly #pool = new SessionPool<NativeClientSession>()
  /** Every session not yet closed, pooled or still being established. */
  readonly #sessions = new Set<NativeClientSession>()
  readonly #closing = new AbortController()
  #closed: Promise<void> | undefined

  constructor(config: ClientConfig) {
    // Every session being opened listens on it: there is no meaningful limit.
    setMaxListeners(0, this.#closing.signal)
    this.#config = config
  }

  async open(app: CarriedConnection, destination: SocketAddress, options: OpenOptions): Promise<NativeTunnel> {
    const fd = asDescriptor(app, 'app')
    // The descriptor is ours from here on: a failure before the addon took it resets it here.
    let owned: number | undefined = fd
    try {
      return await this.#open(destination, options, () => {
        const taken = owned!
        owned = undefined
        return taken
      }, (refused) => (owned = refused))
    } catch (err) {
      // Refused twice: the addon handed the descriptor back with the last refusal.
      const refused = err instanceof StreamRefused ? err : (err as { cause?: unknown }).cause
      if (refused instanceof StreamRefused) owned = refused.fd
      throw err
    } finally {
      if (owned !== undefined) this.#config.addon.resetFd(owned)
    }
  }

  /**
   * Sends `CONNECT` with the application's descriptor: `take` hands it over
   * (the addon's from then on), `giveBack` returns one the addon handed back
   * with a refusal (ours again, to send once more or reset).
   */
  async #open(destination: SocketAddress, options: OpenOptions, take: () => number, giveBack: (fd: number) => void): Promise<NativeTunnel> {
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
    return sendAtMostTwice(authority, this.#config.logger, (err) => err instanceof StreamRefused, async (refusal) => {
      if (refusal instanceof StreamRefused) giveBack(refusal.fd)
      const session = await this.#pool.acquire(key, () => this.#openSession(key, via, expected, options), signal, () => this.#closed !== undefined)
      // A slot of the session is ours: released on every way out that opens no stream.
      try {
        if (this.#closed !== undefined) throw new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed')
        throwIfAborted(signal, 'HBONE connect')
      } catch (err) {
        session.release()
        throw err
      }
      return session.request(take(), authority, headers, signal)
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
    await Promise.all([...this.#sessions].map((session) => session.destroy('HBONE client is closed')))
    this.#pool.clear()
  }

  #openSession(key: string, via: SocketAddress, expected: readonly string[], options: OpenOptions): Promise<NativeClientSession> {
    return establishWithin(this.#config.sessionTimeout, this.#closing.signal, (signal) => this.#establish(key, via, expected, options, signal))
  }

  async #establish(key: string, via: SocketAddress, expected: readonly string[], options: OpenOptions, signal: AbortSignal): Promise<NativeClientSession> {
    const config = this.#config
    const peer = formatSocketAddress(via)
    let context: NativeTlsContext
    let fd: number
    let notAfter: number
    try {
      // The SVID first: no connection is held open while the CA answers.
      const svid = await config.identities.get(options.identity, { signal })
      notAfter = svid.notAfter.getTime()
      context = nativeTlsContext(config.addon, config.identities, svid, 'client')
      const connection = await config.connectSession(via, { signal, identity: options.identity, ...(options.sourceAddress === undefined ? {} : { sourceAddress: options.sourceAddress }) })
      fd = asDescriptor(connection, 'the session connection')
    } catch (err) {
      throw connectFailed(peer, err, signal)
    }
    if (signal.aborted) {
      closeSync(fd)
      throw connectFailed(peer, signal.reason, signal)
    }
    const session = new NativeClientSession(config, peer, expected, () => this.#pool.remove(key, session), () => this.#sessions.delete(session))
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
    session.validUntil(notAfter)
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

/** One of the addon's sessions: its handshake and its streams; when it takes tunnels and how it is kept is the shared {@link PooledSession} policy. */
class NativeClientSession extends PooledSession {
  #session: NativeSession | undefined
  readonly #config: ClientConfig
  readonly #peer: string
  readonly #expected: readonly string[]
  readonly #forget: () => void
  readonly #streams = new Map<number, ClientStream>()
  #closed = false
  /** The server's SETTINGS_MAX_CONCURRENT_STREAMS, once its SETTINGS arrived (as the Node client honours it). */
  #peerMaxStreams = Number.POSITIVE_INFINITY
  /** Until the handshake is decided: how the caller establishing the session hears of it. */
  #handshake: { resolve: () => void; reject: (err: Error) => void } | undefined
  #handshakeFailure: Error | undefined
  readonly #closedPromise: Promise<void>
  #onClosed!: () => void

  constructor(config: ClientConfig, peer: string, expected: readonly string[], removed: () => void, forget: () => void) {
    super(config, removed)
    this.#config = config
    this.#peer = peer
    this.#expected = expected
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

  protected isClosed(): boolean {
    return this.#closed
  }

  protected remoteMaxStreams(): number {
    return this.#peerMaxStreams
  }

  protected sendPing(): boolean {
    this.#config.addon.ping(this.#session!)
    return true
  }

  protected shutdown(): void {
    this.#config.addon.shutdown(this.#session!)
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
    this.retire()
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
        this.pingAnswered()
        return undefined
      case NativeEvent.Settings:
        this.#onSettings(args[0] as number)
        return undefined
      case NativeEvent.GoAway:
        // As Node's client: no new tunnels here, and the session closes once its tunnels have.
        this.retire()
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
      this.validUntil(leafNotAfter(chain))
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
    this.ended()
    this.#failHandshake(this.#closedBeforeUse(reason))
    // A CONNECT that reached the session's thread after it closed gets its StreamClose (Refused) after this.
    if (reason !== null) this.#config.logger.debug({ peer: this.#peer, identity: this.peerIdentity, reason }, 'HBONE session closed (native)')
    this.#forget()
    this.#onClosed()
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

/** When the leaf of a `Handshake` event's chain (DER, leaf first) expires, in milliseconds since the epoch. */
function leafNotAfter(chain: unknown): number {
  return certificateNotAfter(Array.isArray(chain) ? (chain[0] as Buffer | undefined) : undefined)
}
