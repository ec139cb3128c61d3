import type { KubernetesObject, ListWatch } from '@kubernetes/client-node'
import { abortError, throwIfAborted, invalidArgument, type Logger } from '@ambientkit/core'
import type { BackoffOptions } from './pod-source'

/** A running list/watch loop; `stop()` ends it and its restart timer. */
export interface InformerLoop {
  stop(): Promise<void>
}

/**
 * Callers waiting for a first sync: {@link wait} resolves once {@link open}
 * has been called, and rejects when its signal aborts or on {@link fail}.
 */
export class SyncGate {
  #open = false
  readonly #waiters = new Set<{ resolve: () => void; reject: (err: unknown) => void }>()

  get isOpen(): boolean {
    return this.#open
  }

  /** Resolves at once when open; `what` names the wait in an abort error. */
  async wait(signal: AbortSignal | undefined, what: string): Promise<void> {
    throwIfAborted(signal, what)
    if (this.#open) return
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.#waiters.delete(waiter)
        reject(abortError(signal!, what))
      }
      const waiter = {
        resolve: () => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        },
        reject: (err: unknown) => {
          signal?.removeEventListener('abort', onAbort)
          reject(err)
        },
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiters.add(waiter)
    })
  }

  open(): void {
    this.#open = true
    for (const waiter of this.#waiters) waiter.resolve()
    this.#waiters.clear()
  }

  /** Rejects everyone waiting now (e.g. on close); later waits still wait for {@link open}. */
  fail(err: unknown): void {
    for (const waiter of this.#waiters) waiter.reject(err)
    this.#waiters.clear()
  }
}

/** Resolves backoff options against defaults, rejecting non-positive values by name. */
export function backoff(name: string, options: BackoffOptions | undefined, defaults: Required<BackoffOptions>): Required<BackoffOptions> {
  const positive = (field: keyof BackoffOptions): number => {
    const value = options?.[field]
    if (value === undefined) return defaults[field]
    if (!Number.isFinite(value) || value <= 0) throw invalidArgument(`${name}.${field}`, value, 'a positive number')
    return value
  }
  return { initialDelayMs: positive('initialDelayMs'), maxDelayMs: positive('maxDelayMs') }
}

/**
 * Runs a ListWatch until stopped. ListWatch reports a failed list or watch
 * once and stops; restarting it, with backoff, is ours to do. It relists by
 * itself after `410 Gone` and re-watches after a watch the server ended.
 *
 * @param onStarted - Called after each start that listed (or resumed) and
 *   opened its watch without error: the informer's cache is in sync.
 */
export function runInformer(
  what: string,
  informer: ListWatch<KubernetesObject>,
  restart: Required<BackoffOptions>,
  log: Logger,
  onStarted: () => void,
): InformerLoop {
  let delay = restart.initialDelayMs
  let generation = 0
  let failedGeneration = -1
  let stopped = false
  let timer: NodeJS.Timeout | undefined
  let starting: Promise<void> | undefined
  const start = (): void => {
    const current = ++generation
    starting = informer.start()
    starting.then(
      () => {
        if (stopped || failedGeneration === current) return
        // A healthy start earns the next failure a short delay again.
        delay = restart.initialDelayMs
        onStarted()
      },
      (err: unknown) => onError(err),
    )
  }
  const onError = (err: unknown): void => {
    if (stopped) return
    failedGeneration = generation
    log.warn({ err, resource: what, retryInMs: delay }, `watching ${what} failed; restarting`)
    clearTimeout(timer)
    timer = setTimeout(() => {
      timer = undefined
      if (!stopped) start()
    }, delay)
    delay = Math.min(delay * 2, restart.maxDelayMs)
  }
  informer.on('error', onError)
  start()
  return {
    async stop() {
      stopped = true
      clearTimeout(timer)
      await informer.stop()
      // ListWatch only aborts a watch whose request is established: one still
      // connecting when stop() came would stay open, so stop it once it is.
      await starting?.catch(() => {})
      await informer.stop()
    },
  }
}
