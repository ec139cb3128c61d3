import { AmbientError, CoreErrorCode, abortError, type Logger } from '@ambientkit/core'
import { HboneErrorCode } from '../hbone/errors'
import type { HboneSessionStats } from './contract'

/** What a {@link SessionPool} needs of a session. */
export interface PoolMember {
  readonly peerIdentity: string
  /** Stream slots taken. */
  readonly streams: number
  hasRoom(): boolean
  /** Takes a slot, synchronously, so that concurrent callers count each other. */
  reserve(): void
}

interface PoolEntry<S> {
  readonly sessions: S[]
  /** The session being opened for this key, shared by every caller that found no room. */
  opening?: Promise<S>
}

/**
 * The HBONE clients' session pool (every transport's): sessions
 * by key (source identity, expected identities, peer, source address), a
 * slot on the first one with room, and one session opened at a time per key
 * for every caller that found none.
 */
export class SessionPool<S extends PoolMember> {
  readonly #entries = new Map<string, PoolEntry<S>>()

  /**
   * A session of `key` with a slot reserved for the caller: one with room,
   * or the one `open` establishes (and {@link add}s). Rejects when `signal`
   * aborts (the shared open goes on for the others) or when `closed()` turned
   * true meanwhile.
   */
  async acquire(key: string, open: () => Promise<S>, signal: AbortSignal | undefined, closed: () => boolean): Promise<S> {
    for (;;) {
      const entry = this.#entry(key)
      const free = entry.sessions.find((session) => session.hasRoom())
      if (free !== undefined) {
        free.reserve()
        return free
      }
      entry.opening ??= open().finally(() => {
        entry.opening = undefined
        if (entry.sessions.length === 0 && this.#entries.get(key) === entry) this.#entries.delete(key)
      })
      await raceSignal(entry.opening, signal, 'HBONE connect')
      if (closed()) throw new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed')
    }
  }

  /** Pools an established session under `key`. */
  add(key: string, session: S): void {
    this.#entry(key).sessions.push(session)
  }

  /** Takes a session out of the pool (it went away, or takes no more streams). */
  remove(key: string, session: S): void {
    const entry = this.#entries.get(key)
    if (entry === undefined) return
    const index = entry.sessions.indexOf(session)
    if (index >= 0) entry.sessions.splice(index, 1)
    if (entry.sessions.length === 0 && entry.opening === undefined) this.#entries.delete(key)
  }

  /** Every pooled session. */
  all(): S[] {
    return [...this.#entries.values()].flatMap((entry) => entry.sessions)
  }

  stats(): HboneSessionStats[] {
    const all: HboneSessionStats[] = []
    for (const [key, entry] of this.#entries) {
      for (const session of entry.sessions) all.push({ key, peerIdentity: session.peerIdentity, streams: session.streams })
    }
    return all
  }

  clear(): void {
    this.#entries.clear()
  }

  #entry(key: string): PoolEntry<S> {
    let entry = this.#entries.get(key)
    if (entry === undefined) {
      entry = { sessions: [] }
      this.#entries.set(key, entry)
    }
    return entry
  }
}

/**
 * Runs `establish` with a signal that aborts after `timeout` milliseconds or
 * when `closing` aborts: one session attempt of an HBONE client.
 */
export async function establishWithin<T>(timeout: number, closing: AbortSignal, establish: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const attempt = new AbortController()
  const timer = setTimeout(() => attempt.abort(new AmbientError(CoreErrorCode.Aborted, `HBONE session not established within ${timeout} ms`)), timeout)
  const onClosing = (): void => attempt.abort(closing.reason)
  closing.addEventListener('abort', onClosing, { once: true })
  if (closing.aborted) onClosing()
  try {
    return await establish(attempt.signal)
  } finally {
    clearTimeout(timer)
    closing.removeEventListener('abort', onClosing)
  }
}

/** `promise`, or an abort error once `signal` aborts: one caller stops waiting for a shared operation without cancelling it. */
export function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  if (signal === undefined) return promise
  if (signal.aborted) return Promise.reject(abortError(signal, what))
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal, what))
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        resolve(value)
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(err as Error)
      },
    )
  })
}

/** How a client keeps its sessions: the same for every transport. */
export interface SessionPolicy {
  /** Streams per session (also capped by the server's SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly maxStreams: number
  readonly idleTimeout: number
  readonly keepaliveInterval: number
  readonly keepaliveTimeout: number
  readonly logger: Logger
}

/**
 * One pooled session, whatever carries it: the one policy of when a
 * session takes a tunnel, is kept alive, and leaves the pool. It takes
 * streams while it is usable, open, under the stream limits and within the
 * lifetime of both certificates of its handshake; it sends a PING every
 * `keepaliveInterval` and is destroyed when one goes unanswered for
 * `keepaliveTimeout`; it leaves the pool (and shuts down gracefully: GOAWAY,
 * then close once its streams ended) after `idleTimeout` without streams,
 * when told to go away, or when a certificate expires (live streams may
 * finish). A transport implements the few operations below.
 */
export abstract class PooledSession implements PoolMember {
  /** The server's verified SPIFFE ID, once the handshake accepted it. */
  peerIdentity = ''
  /** Slots taken: streams open and callers about to open one. */
  streams = 0
  protected readonly policy: SessionPolicy
  readonly #removed: () => void
  #usable = true
  #ended = false
  #keepalive: NodeJS.Timeout | undefined
  #idle: NodeJS.Timeout | undefined
  #expiry: NodeJS.Timeout | undefined
  #notAfter = Number.POSITIVE_INFINITY
  #pingSentAt: number | undefined

  constructor(policy: SessionPolicy, removed: () => void) {
    this.policy = policy
    this.#removed = removed
  }

  /** True once the session is closed or closing. */
  protected abstract isClosed(): boolean
  /** The server's SETTINGS_MAX_CONCURRENT_STREAMS (`Infinity` until known). */
  protected abstract remoteMaxStreams(): number
  /** Sends a PING; {@link pingAnswered} is called on its ACK. False when it could not be sent. */
  protected abstract sendPing(): boolean
  /** GOAWAY, then close once the open streams have ended. */
  protected abstract shutdown(): void
  /** Resets every stream and closes the connection; resolves once closed. */
  abstract destroy(reason: string): Promise<void>

  hasRoom(): boolean {
    if (!this.#usable || this.isClosed()) return false
    if (Date.now() >= this.#notAfter) {
      this.#expire()
      return false
    }
    return this.streams < Math.min(this.policy.maxStreams, this.remoteMaxStreams())
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

  /**
   * The session's handshake used certificates valid until `notAfter`
   * (milliseconds since the epoch: the earlier of ours and the peer's):
   * from then on it takes no tunnel, and shuts down once its tunnels ended.
   */
  validUntil(notAfter: number): void {
    this.#notAfter = Math.min(this.#notAfter, notAfter)
    clearTimeout(this.#expiry)
    if (this.#ended) return
    // Timers hold 32-bit delays: a far expiry is checked again when this one fires.
    this.#expiry = setTimeout(() => (Date.now() >= this.#notAfter ? this.#expire() : this.validUntil(this.#notAfter)), Math.min(Math.max(0, this.#notAfter - Date.now()), 2 ** 31 - 1)).unref()
  }

  /** In the pool: keepalive and the idle timer run. */
  pooled(): void {
    if (this.isClosed()) return
    this.#keepalive = setInterval(() => this.#ping(), this.policy.keepaliveInterval).unref()
    this.#armIdle()
  }

  /** Takes no new streams and leaves the pool. Idempotent. */
  retire(): void {
    if (!this.#usable) return
    this.#usable = false
    this.#removed()
  }

  /** The peer's PING ACK arrived. */
  protected pingAnswered(): void {
    this.#pingSentAt = undefined
  }

  /** The session closed: it leaves the pool and its timers stop. */
  protected ended(): void {
    this.#ended = true
    this.retire()
    clearInterval(this.#keepalive)
    clearTimeout(this.#idle)
    clearTimeout(this.#expiry)
  }

  #expire(): void {
    if (!this.#usable) return
    this.policy.logger.debug({ peer: this.peerIdentity }, 'HBONE session reached the end of a certificate it was opened with; opening new tunnels elsewhere')
    this.retire()
    this.shutdown()
  }

  #ping(): void {
    if (this.isClosed()) return
    const now = performance.now()
    if (this.#pingSentAt === undefined) {
      this.#pingSentAt = now
      if (!this.sendPing()) this.#pingSentAt = undefined
    } else if (now - this.#pingSentAt >= this.policy.keepaliveTimeout) {
      this.policy.logger.warn({ peer: this.peerIdentity }, 'HBONE session did not answer PING; destroying it')
      void this.destroy('HBONE session keepalive timed out')
    }
  }

  #armIdle(): void {
    if (this.streams > 0 || !this.#usable || this.isClosed() || this.#keepalive === undefined) return
    clearTimeout(this.#idle)
    this.#idle = setTimeout(() => {
      this.retire()
      this.shutdown()
    }, this.policy.idleTimeout).unref()
  }
}

/**
 * Sends a `CONNECT` with `send`; one the server did not process
 * (`unprocessed`) reached nothing (RFC 9113 §8.7), so it is sent once more
 * (`send(refusal)`), on another session since the refusing one is going
 * away, before giving up with `ERR_AMBIENT_HBONE_STREAM` ("refused twice").
 */
export async function sendAtMostTwice<T>(
  authority: string,
  logger: Logger,
  unprocessed: (err: unknown) => boolean,
  send: (refusal?: unknown) => Promise<T>,
): Promise<T> {
  let refusal: unknown
  try {
    return await send()
  } catch (err) {
    if (!unprocessed(err)) throw err
    refusal = err
  }
  logger.debug({ authority, reason: (refusal as Error).message }, 'HBONE CONNECT refused before processing; trying another session')
  try {
    return await send(refusal)
  } catch (again) {
    if (!unprocessed(again)) throw again
    throw new AmbientError(HboneErrorCode.Stream, `HBONE CONNECT ${authority} was refused twice before any processing: ${(again as Error).message}`, {
      cause: again,
      details: { authority },
    })
  }
}
