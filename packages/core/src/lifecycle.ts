/**
 * The one lifecycle shape of ambientkit's long-lived objects, and its one
 * way of subscribing to changes. Every package follows them:
 *
 * - a long-lived object is {@link LongLived}: an idempotent `close()`, and
 *   `[Symbol.asyncDispose]()` calling it, so `await using` closes it;
 * - where it starts (listens, follows a source), `start({ signal })`
 *   ({@link Startable}); where it can finish what is in flight before closing,
 *   `drain({ deadline, signal })` ({@link Drainable});
 * - every asynchronous call that can wait takes `{ signal }` ({@link AbortOptions});
 * - whatever publishes changes does it through `subscribe(listener, { signal })`
 *   ({@link Subscribable}): the listener gets one event object with a `type`,
 *   the call returns the function that unsubscribes, and an aborted signal
 *   unsubscribes too.
 *
 * @module
 */
import { AmbientError, CoreErrorCode } from './errors'
import type { Logger } from './logger'

/** Options every asynchronous ambientkit call accepts. */
export interface AbortOptions {
  /** Cancels the operation; it then rejects with `ERR_AMBIENT_ABORTED`. */
  signal?: AbortSignal
}

/** Something that can be closed. `close()` is idempotent: a later call resolves once the first one has finished. */
export interface Closable {
  close(): Promise<void>
}

/**
 * A long-lived object: it holds sockets, timers, handles or listeners until
 * `close()`, which is idempotent, and `await using` closes it.
 *
 * @example
 * ```ts
 * import { createCertificateAuthority, createIdentityManager, createLocalCaSource } from '@ambientkit/identity'
 *
 * const ca = await createCertificateAuthority({ trustDomain: 'example.org' })
 * {
 *   await using manager = createIdentityManager({ source: createLocalCaSource(ca) })
 *   await manager.get('spiffe://example.org/ns/shop/sa/api')
 * } // closed here, also when the block throws
 * ```
 */
export interface LongLived extends Closable, AsyncDisposable {
  /** Calls `close()`. */
  [Symbol.asyncDispose](): Promise<void>
}

/** Something started once it is created: `start` is called once, before use. */
export interface Startable<T = void> {
  /** Starts it; rejects with `ERR_AMBIENT_ABORTED`, having undone what was done, when `signal` aborts first. */
  start(options?: AbortOptions): Promise<T>
}

/** Options of {@link Drainable.drain}. */
export interface DrainOptions extends AbortOptions {
  /**
   * How long, in milliseconds from the call, what is in flight may take to
   * finish before it is closed. Default: the implementation's, which it documents.
   */
  deadline?: number
  // An aborted signal cuts the wait short: what is left is closed at once, and drain resolves once it is.
}

/** Something that can stop taking new work and finish what it has before closing. */
export interface Drainable {
  /** Stops taking new work, waits for what is in flight until `deadline`, then closes. Resolves once closed. */
  drain(options?: DrainOptions): Promise<void>
}

/** Stops a subscription. Idempotent. */
export type Unsubscribe = () => void

/** Options of {@link Subscribable.subscribe}. */
export interface SubscribeOptions {
  /** Unsubscribes when it aborts. */
  signal?: AbortSignal
}

/** Publishes events of type `E` (a union of objects with a `type`). */
export interface Subscribable<E> {
  /**
   * Calls `listener` with every event after this call, until unsubscribed.
   * A listener that throws does not keep the others from their event.
   */
  subscribe(listener: (event: E) => void, options?: SubscribeOptions): Unsubscribe
}

/** The listeners of one {@link Subscribable}, for its implementation. */
export interface Subscribers<E> extends Subscribable<E> {
  /**
   * Calls every listener subscribed now with `event`, in the order they
   * subscribed. One that throws does not keep the others from the event:
   * its error is logged when there is a logger, else thrown once all have
   * run, as `ERR_AMBIENT_LISTENER_FAILED`.
   */
  emit(event: E): void
  /** How many listeners are subscribed. */
  readonly size: number
  /** Unsubscribes every listener (what the owner's `close()` does). */
  clear(): void
}

/** Options of {@link createSubscribers}. */
export interface SubscribersOptions {
  /** Where a listener's error goes. Default: thrown from `emit` once every listener has run. */
  logger?: Logger
  /** What publishes, for messages (`'workload registry'`). */
  what?: string
}

/**
 * The listeners of a {@link Subscribable}: what an implementation of
 * `subscribe` keeps, with the rules every package follows.
 *
 * @example
 * ```ts
 * import { createSubscribers, type Subscribable } from '@ambientkit/core'
 *
 * type DoorEvent = { type: 'opened'; by: string } | { type: 'closed' }
 * const subscribers = createSubscribers<DoorEvent>({ what: 'door' })
 * const door: Subscribable<DoorEvent> = subscribers
 * const stop = door.subscribe((event) => console.log(event.type))
 * subscribers.emit({ type: 'opened', by: 'alice' })
 * stop()
 * ```
 */
export function createSubscribers<E>(options: SubscribersOptions = {}): Subscribers<E> {
  const what = options.what ?? 'subscription'
  // One entry per subscription, so the same function subscribed twice is called twice and unsubscribed once.
  const entries = new Set<{ listener: (event: E) => void; unsubscribe: Unsubscribe }>()
  return {
    subscribe(listener, subscribeOptions = {}) {
      const signal = subscribeOptions.signal
      if (signal?.aborted === true) return () => {}
      const unsubscribe = (): void => {
        entries.delete(entry)
        signal?.removeEventListener('abort', unsubscribe)
      }
      const entry = { listener, unsubscribe }
      entries.add(entry)
      signal?.addEventListener('abort', unsubscribe, { once: true })
      return unsubscribe
    },
    emit(event) {
      let failure: unknown
      let failed = false
      for (const entry of [...entries]) {
        try {
          entry.listener(event)
        } catch (err) {
          if (options.logger !== undefined) {
            options.logger.error({ err, event: (event as { type?: unknown } | null)?.type }, `a listener of the ${what} threw`)
          } else if (!failed) {
            failed = true
            failure = err
          }
        }
      }
      if (failed) {
        throw new AmbientError(CoreErrorCode.ListenerFailed, `a listener of the ${what} threw: ${failure instanceof Error ? failure.message : String(failure)}`, {
          cause: failure,
        })
      }
    },
    get size() {
      return entries.size
    },
    clear() {
      for (const entry of [...entries]) entry.unsubscribe()
    },
  }
}
