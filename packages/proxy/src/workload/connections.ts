import { channel } from 'node:diagnostics_channel'
import { AmbientError, CoreErrorCode, type AbortOptions, type AuthorizationConnection, type AuthorizationDecision, type Logger, type Workload } from '@ambientkit/core'
import type { AccessLogEntry, AccessLogPeer, ConnectionOutcome, ProxyListener } from '../access-log'
import type { HboneHandshakeFailure } from '../transport/contract'

/**
 * Every proxied connection has exactly one {@link ConnectionRecord}, from
 * accept to close. It opens at most once (the connection is established:
 * upstream connected, tunnel answered 200) and closes exactly once, and it
 * is the only thing that reports a connection: it publishes both events on
 * `node:diagnostics_channel`, where metrics and the access log subscribe
 * (as undici publishes its requests). Labels and peers are fixed before the
 * open, so the open and the close of one connection are always counted
 * under the same labels.
 */

/** The channel a connection's open is published on: `{ connection: ProxyConnection }`. */
export const CONNECTION_OPEN_CHANNEL = 'ambientkit:proxy:connection:open'
/** The channel a connection's close is published on: `{ connection: ProxyConnection, entry: AccessLogEntry }`. */
export const CONNECTION_CLOSE_CHANNEL = 'ambientkit:proxy:connection:close'

/** The channel an inbound handshake that failed (TLS, ALPN, identity) is published on: `{ telemetry, workload, failure }`. */
export const HANDSHAKE_FAILURE_CHANNEL = 'ambientkit:proxy:handshake-failure'

const opened = channel(CONNECTION_OPEN_CHANNEL)
const closed = channel(CONNECTION_CLOSE_CHANNEL)
const handshakeFailures = channel(HANDSHAKE_FAILURE_CHANNEL)

/** The message on {@link HANDSHAKE_FAILURE_CHANNEL}. */
export interface HandshakeFailureMessage {
  /** The scope of the workload proxy that refused it (see {@link ProxyConnection.telemetry}). */
  readonly telemetry: object | undefined
  readonly workload: Workload
  readonly failure: HboneHandshakeFailure
}

/** Publishes a failed inbound handshake. */
export function publishHandshakeFailure(message: HandshakeFailureMessage): void {
  if (handshakeFailures.hasSubscribers) handshakeFailures.publish(message)
}

/** A proxied connection, as its open and close events carry it. */
export interface ProxyConnection {
  /** Who observes it: the `telemetry` of the workload proxy that carries it (a node proxy passes one for all its workloads). Subscribers keep to theirs. */
  readonly telemetry: object | undefined
  /** The workload whose proxy carries the connection. */
  readonly workload: Workload
  /** That workload's SPIFFE ID. */
  readonly identity: string
  readonly listener: ProxyListener
  /** `HBONE` or `local` when tunnelled (see `AccessLogEntry.protocol`), `TCP` when plaintext. */
  readonly protocol: AccessLogEntry['protocol']
  readonly source: AccessLogPeer
  readonly destination: AccessLogPeer
  /** The service the destination was chosen from (its host name): the VIP the app connected to, or the one the HBONE peer named in `forwarded`. */
  readonly service?: string
  /** That service's namespace. */
  readonly serviceNamespace?: string
  /** The authorization policy that decided, when one did. */
  readonly policy?: string
  /** `Date.now()` at accept. */
  readonly startedAt: number
  /** True once it was established (an open event was published). */
  readonly established: boolean
}

/** The message on {@link CONNECTION_OPEN_CHANNEL}. */
export interface ConnectionOpenMessage {
  readonly connection: ProxyConnection
}

/** The message on {@link CONNECTION_CLOSE_CHANNEL}: the connection and its access-log entry. */
export interface ConnectionCloseMessage {
  readonly connection: ProxyConnection
  readonly entry: AccessLogEntry
}

/** What a record reports when it closes. */
export interface ConnectionEnd {
  readonly outcome: ConnectionOutcome
  readonly bytesSent?: number
  readonly bytesReceived?: number
  readonly reason?: string
}

/** One proxied connection (see the module's description). */
export class ConnectionRecord implements ProxyConnection {
  protocol: AccessLogEntry['protocol'] = 'TCP'
  destination: AccessLogPeer
  service: string | undefined
  serviceNamespace: string | undefined
  policy: string | undefined
  /** Inbound connections: what authorization saw, re-evaluated when policies change. */
  authorization: AuthorizationConnection | undefined
  /** Set when the proxy closed it (policy change, removal, drain): its outcome is then `terminated`. */
  terminatedBy: string | undefined
  readonly startedAt = Date.now()
  readonly #started = performance.now()
  #state: 'pending' | 'open' | 'closed' = 'pending'
  #opened = false
  /** What {@link terminate} does now: abort the attempt, or reset what carries the connection. */
  #stop: (() => void) | undefined

  constructor(
    readonly manager: ConnectionManager,
    readonly listener: ProxyListener,
    readonly source: AccessLogPeer,
    destination: AccessLogPeer,
  ) {
    this.destination = destination
  }

  get telemetry(): object | undefined {
    return this.manager.telemetry
  }

  get workload(): Workload {
    return this.manager.workload
  }

  get identity(): string {
    return this.manager.identity
  }

  get established(): boolean {
    return this.#opened
  }

  /** From now on, {@link terminate} calls `stop` (it aborts an attempt, or resets the carried connection). */
  onTerminate(stop: () => void): void {
    this.#stop = stop
  }

  /** The proxy closes the connection (`reason` for its log line); its outcome will be `terminated`. */
  terminate(reason: string): void {
    if (this.#state === 'closed') return
    this.terminatedBy ??= reason
    this.#stop?.()
  }

  /** Established: publishes the open, once. */
  open(): void {
    if (this.#state !== 'pending') return
    this.#state = 'open'
    this.#opened = true
    if (opened.hasSubscribers) opened.publish({ connection: this } satisfies ConnectionOpenMessage)
  }

  /** Ended (or refused, denied, failed before it was established): publishes the close, once, and leaves the manager. */
  close(end: ConnectionEnd): void {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    this.#stop = undefined
    this.manager.forget(this)
    if (!closed.hasSubscribers) return
    const outcome = this.terminatedBy !== undefined && this.#opened ? 'terminated' : end.outcome
    const reason = outcome === 'terminated' ? this.terminatedBy : end.reason
    const entry: AccessLogEntry = {
      listener: this.listener,
      protocol: this.protocol,
      source: this.source,
      destination: this.destination,
      ...(this.service === undefined ? {} : { service: this.service }),
      ...(this.serviceNamespace === undefined ? {} : { serviceNamespace: this.serviceNamespace }),
      bytesSent: end.bytesSent ?? 0,
      bytesReceived: end.bytesReceived ?? 0,
      durationMs: performance.now() - this.#started,
      outcome,
      ...(reason === undefined ? {} : { reason }),
      ...(this.policy === undefined ? {} : { policy: this.policy }),
    }
    closed.publish({ connection: this, entry } satisfies ConnectionCloseMessage)
  }
}

/**
 * The connections of one workload proxy: it tracks them, closes those a
 * policy change now denies, and waits for them to end when draining.
 */
export class ConnectionManager {
  readonly #records = new Set<ConnectionRecord>()
  readonly #idleWaiters = new Set<() => void>()

  constructor(
    /** The workload, as last updated. */
    public workload: Workload,
    readonly identity: string,
    readonly telemetry: object | undefined,
    readonly logger: Logger,
  ) {}

  /** A new connection on `listener`, tracked until its record closes. */
  start(listener: ProxyListener, source: AccessLogPeer, destination: AccessLogPeer): ConnectionRecord {
    const record = new ConnectionRecord(this, listener, source, destination)
    this.#records.add(record)
    return record
  }

  /** Called by a record as it closes. */
  forget(record: ConnectionRecord): void {
    if (this.#records.delete(record) && this.#records.size === 0) {
      for (const resolve of this.#idleWaiters) resolve()
      this.#idleWaiters.clear()
    }
  }

  /** Connections tracked now. */
  get size(): number {
    return this.#records.size
  }

  /** Policies changed: closes every established inbound connection that `authorize` now denies. */
  reauthorize(authorize: (connection: AuthorizationConnection) => AuthorizationDecision): void {
    for (const record of this.#records) {
      if (record.authorization === undefined) continue
      // An inbound connection's destination is this workload, as it is now (its labels select policies).
      const decision = authorize({ ...record.authorization, destination: this.workload })
      if (decision.allowed) continue
      const by = decision.policy ? `${decision.policy.namespace}/${decision.policy.name}` : decision.reason
      this.logger.info({ by }, 'policy change denies an established connection: closing it')
      record.terminate(`denied after a policy change (${by})`)
    }
  }

  /** Terminates every connection. */
  terminateAll(reason: string): void {
    for (const record of this.#records) record.terminate(reason)
  }

  /** Resolves once no connection is tracked, or at `deadline` milliseconds, or when `signal` aborts (then rejects). */
  async idle(options: AbortOptions & { readonly deadline: number }): Promise<void> {
    if (this.#records.size === 0) return
    let resolveIdle!: () => void
    const idle = new Promise<void>((resolve) => this.#idleWaiters.add((resolveIdle = resolve)))
    try {
      await settledWithin(idle, options)
    } finally {
      this.#idleWaiters.delete(resolveIdle)
    }
  }
}

/** Resolves once `promise` settles, or at `deadline` milliseconds, or when `signal` aborts (then rejects): a drain's bounded wait. */
export async function settledWithin(promise: Promise<unknown>, options: AbortOptions & { readonly deadline: number }): Promise<void> {
  options.signal?.throwIfAborted()
  let timer: NodeJS.Timeout | undefined
  let onAbort: (() => void) | undefined
  try {
    await new Promise<void>((resolve, reject) => {
      promise.then(() => resolve(), () => resolve())
      timer = setTimeout(resolve, options.deadline)
      onAbort = () => reject(new AmbientError(CoreErrorCode.Aborted, 'drain was aborted', { cause: options.signal!.reason }))
      options.signal?.addEventListener('abort', onAbort, { once: true })
    })
  } finally {
    clearTimeout(timer)
    if (onAbort !== undefined) options.signal?.removeEventListener('abort', onAbort)
  }
}
