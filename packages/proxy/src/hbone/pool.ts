import { AmbientError, CoreErrorCode, abortError } from '@ambientkit/core'
import type { HboneSessionStats } from './client'

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
 * The HBONE clients' session pool (the Node one and the native one): sessions
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
