import { X509Certificate } from 'node:crypto'
import { AmbientError, type SocketAddress } from '@ambientkit/core'
import { HboneErrorCode } from '../hbone/errors'
import type { TunnelTimeouts } from '../splice-timers'
import { positiveInteger } from '../hbone/settings'
import type { HboneHandshakeFailure, TransportServerOptions } from './contract'

/**
 * What a peer can make an HBONE server hold, bounded once for every
 * transport: connections still handshaking (per source address and in
 * total, each for at most the handshake timeout), sessions and tunnels per
 * authenticated peer identity, and a session's life (its certificates').
 * A transport's server asks its {@link ServerLimits} before it holds
 * anything for a peer and gives back what it released.
 */

/** Milliseconds to finish the TLS handshake: a few round trips and two signatures. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000
/** Connections handshaking at once from one source address: a node's worth of new sessions, not a flood. */
export const DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE = 64
/** Connections handshaking at once in total: a small fraction of a process's descriptors (ulimit 1024 at least). */
export const DEFAULT_MAX_PENDING_HANDSHAKES = 512
/** Sessions one peer identity holds open: a client pools 1 per 100 tunnels (ztunnel's), so room for thousands of tunnels. */
export const DEFAULT_MAX_SESSIONS_PER_PEER = 128
/** Tunnels one peer identity holds open (being decided, connecting or carried). */
export const DEFAULT_MAX_STREAMS_PER_PEER = 10_000
/** Milliseconds the tunnels of a session whose certificate expired may run after its GOAWAY. */
export const DEFAULT_EXPIRED_SESSION_DRAIN_MS = 30_000
/** Milliseconds a tunnel may move no byte: Envoy's TCP proxy default (an hour), long enough for idle database connections. */
export const DEFAULT_TUNNEL_IDLE_MS = 3_600_000
/** Milliseconds a tunnel may wait on a peer that takes none of its bytes (a reader that stopped, not a slow one). */
export const DEFAULT_TUNNEL_STALL_MS = 120_000

/** A server's limits after defaults. */
export interface ServerLimitValues {
  readonly handshakeTimeout: number
  readonly maxPendingHandshakesPerSource: number
  readonly maxPendingHandshakes: number
  readonly maxSessionsPerPeer: number
  readonly maxStreamsPerPeer: number
  readonly expiredSessionDrainTimeout: number
  readonly tunnelIdleTimeout: number
  readonly tunnelStallTimeout: number
}

/** A connection admitted into its handshake: settle it once the handshake ended, whichever way (idempotent). */
export interface PendingHandshake {
  settle(): void
}

/** Counts per key against one limit. */
class Counts {
  readonly #counts = new Map<string, number>()

  take(key: string, limit: number): boolean {
    const count = this.#counts.get(key) ?? 0
    if (count >= limit) return false
    this.#counts.set(key, count + 1)
    return true
  }

  give(key: string): void {
    const count = (this.#counts.get(key) ?? 0) - 1
    if (count > 0) this.#counts.set(key, count)
    else this.#counts.delete(key)
  }
}

/** The limits of one server, and what its peers hold against them. */
export class ServerLimits {
  readonly values: ServerLimitValues
  /** The idle and stall timeouts of every tunnel the server carries. */
  readonly tunnelTimeouts: TunnelTimeouts
  readonly #pendingBySource = new Counts()
  #pending = 0
  readonly #sessions = new Counts()
  readonly #streams = new Counts()

  constructor(options: Pick<TransportServerOptions, keyof ServerLimitValues>) {
    this.values = {
      handshakeTimeout: positiveInteger(options.handshakeTimeout, 'handshakeTimeout', DEFAULT_HANDSHAKE_TIMEOUT_MS, 2 ** 31 - 1),
      maxPendingHandshakesPerSource: positiveInteger(options.maxPendingHandshakesPerSource, 'maxPendingHandshakesPerSource', DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE),
      maxPendingHandshakes: positiveInteger(options.maxPendingHandshakes, 'maxPendingHandshakes', DEFAULT_MAX_PENDING_HANDSHAKES),
      maxSessionsPerPeer: positiveInteger(options.maxSessionsPerPeer, 'maxSessionsPerPeer', DEFAULT_MAX_SESSIONS_PER_PEER),
      maxStreamsPerPeer: positiveInteger(options.maxStreamsPerPeer, 'maxStreamsPerPeer', DEFAULT_MAX_STREAMS_PER_PEER),
      expiredSessionDrainTimeout: positiveInteger(options.expiredSessionDrainTimeout, 'expiredSessionDrainTimeout', DEFAULT_EXPIRED_SESSION_DRAIN_MS, 2 ** 31 - 1),
      tunnelIdleTimeout: positiveInteger(options.tunnelIdleTimeout, 'tunnelIdleTimeout', DEFAULT_TUNNEL_IDLE_MS, 2 ** 31 - 1),
      tunnelStallTimeout: positiveInteger(options.tunnelStallTimeout, 'tunnelStallTimeout', DEFAULT_TUNNEL_STALL_MS, 2 ** 31 - 1),
    }
    this.tunnelTimeouts = { idle: this.values.tunnelIdleTimeout, stall: this.values.tunnelStallTimeout }
  }

  /**
   * Admits a connection from `source` into its handshake (sources are told
   * apart by IP address; an unknown one counts as one source),
   * or refuses it (a failure to report, reason `'shed'`) when that source or
   * the server already has as many handshaking as allowed. `onTimeout` is
   * called, and the handshake settled, when it has not finished within the
   * handshake timeout: close the connection and report `error` (reason `'timeout'`).
   */
  admit(peer: SocketAddress | undefined, onTimeout: (error: AmbientError) => void): PendingHandshake | Pick<HboneHandshakeFailure, 'reason' | 'error'> {
    const { maxPendingHandshakes, maxPendingHandshakesPerSource, handshakeTimeout } = this.values
    const source = peer?.address ?? 'unknown'
    if (this.#pending >= maxPendingHandshakes) return shed(`${maxPendingHandshakes} connections are already handshaking (maxPendingHandshakes)`, peer)
    if (!this.#pendingBySource.take(source, maxPendingHandshakesPerSource)) {
      return shed(`${maxPendingHandshakesPerSource} connections from ${source} are already handshaking (maxPendingHandshakesPerSource)`, peer)
    }
    this.#pending++
    let settled = false
    const settle = (): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      this.#pending--
      this.#pendingBySource.give(source)
    }
    const timer = setTimeout(() => {
      settle()
      const message = `the TLS handshake did not finish within ${handshakeTimeout} ms (handshakeTimeout)`
      onTimeout(new AmbientError(HboneErrorCode.HandshakeTimeout, message, { details: peer === undefined ? {} : { peerAddress: peer } }))
    }, handshakeTimeout)
    return { settle }
  }

  /** Counts a new session of `identity`, or refuses it (a failure to report) when that identity holds as many as allowed. */
  openSession(identity: string): Pick<HboneHandshakeFailure, 'reason' | 'error'> | undefined {
    const limit = this.values.maxSessionsPerPeer
    return this.#sessions.take(identity, limit) ? undefined : shed(`${identity} already holds ${limit} sessions (maxSessionsPerPeer)`)
  }

  closeSession(identity: string): void {
    this.#sessions.give(identity)
  }

  /** Counts a new tunnel of `identity`; false when that identity holds as many as allowed. */
  openStream(identity: string): boolean {
    return this.#streams.take(identity, this.values.maxStreamsPerPeer)
  }

  closeStream(identity: string): void {
    this.#streams.give(identity)
  }

  /**
   * Ends a session with its certificates: at `notAfter` (milliseconds
   * since the epoch) `goaway` is called (no new tunnels; live ones go on),
   * and `destroy` once the drain deadline has passed too. Returns how to
   * cancel both, for a session that closed first.
   */
  expireAt(notAfter: number, goaway: () => void, destroy: () => void): () => void {
    let timer: NodeJS.Timeout | undefined
    const arm = (at: number, fire: () => void): void => {
      // Timers hold 32-bit delays: a far expiry is armed again when this one fires.
      const delay = Math.min(Math.max(0, at - Date.now()), 2 ** 31 - 1)
      timer = setTimeout(() => (Date.now() >= at ? fire() : arm(at, fire)), delay).unref()
    }
    if (Number.isFinite(notAfter)) {
      arm(notAfter, () => {
        goaway()
        arm(Date.now() + this.values.expiredSessionDrainTimeout, destroy)
      })
    }
    return () => clearTimeout(timer)
  }
}

/** A refusal by a limit; the error's `details.peerAddress` is the peer, for a transport that cannot read it off a closed connection. */
function shed(message: string, peer?: SocketAddress): Pick<HboneHandshakeFailure, 'reason' | 'error'> {
  return { reason: 'shed', error: new AmbientError(HboneErrorCode.Shed, `connection refused: ${message}`, { details: peer === undefined ? {} : { peerAddress: peer } }) }
}

/** When a leaf certificate (DER) expires, in milliseconds since the epoch; `Infinity` when it cannot be read. */
export function certificateNotAfter(der: Buffer | undefined): number {
  if (der === undefined) return Number.POSITIVE_INFINITY
  const time = Date.parse(new X509Certificate(der).validTo)
  return Number.isNaN(time) ? Number.POSITIVE_INFINITY : time
}
