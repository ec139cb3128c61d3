import type { Duplex } from 'node:stream'
import { AmbientError } from '@ambientkit/core'
import { HboneErrorCode } from './hbone/errors'

/** How long a spliced tunnel may go without moving a byte: idle (nothing to move), or stalled (a side does not read what waits for it). */
export interface TunnelTimeouts {
  /** Milliseconds without a byte either way. */
  readonly idle: number
  /** Milliseconds a side waits with bytes the other does not take (its peer stopped reading). */
  readonly stall: number
}

/**
 * The idle and stall timers of one splice, whatever it splices (a socket
 * with an HTTP/2 stream, or two sockets in process): `expire` is called
 * with an `ERR_AMBIENT_HBONE_TUNNEL_TIMEOUT` error once the splice moved
 * no byte for `idle` ms, or a side waited `stall` ms for its peer to drain.
 * Both timers are unref'd: they never keep a process alive.
 */
export class SpliceTimers {
  readonly #idle: NodeJS.Timeout
  #stall: NodeJS.Timeout | undefined

  constructor(
    readonly timeouts: TunnelTimeouts,
    readonly expire: (error: AmbientError) => void,
  ) {
    this.#idle = setTimeout(() => this.#expire(`the tunnel moved no byte for ${timeouts.idle} ms (tunnelIdleTimeout)`), timeouts.idle).unref()
  }

  /** A byte moved: the splice is not idle. */
  moved(): void {
    this.#idle.refresh()
  }

  /** A side waits for its peer to drain: the splice stalls unless it does within the stall timeout. */
  waiting(): void {
    if (this.#stall !== undefined) return
    this.#stall = setTimeout(() => this.#expire(`the tunnel's peer took no byte for ${this.timeouts.stall} ms (tunnelStallTimeout)`), this.timeouts.stall).unref()
  }

  /** The peer drained: no longer stalled. */
  drained(): void {
    clearTimeout(this.#stall)
    this.#stall = undefined
  }

  /** The splice ended. */
  stop(): void {
    clearTimeout(this.#idle)
    clearTimeout(this.#stall)
  }

  #expire(message: string): void {
    this.expire(new AmbientError(HboneErrorCode.TunnelTimeout, message))
  }
}

/**
 * What both splices do with a chunk read from `from`: write it to `to`,
 * pausing `from` on backpressure (until `to` drains, which may stall the
 * splice) and for good once `to` is finished or gone.
 */
export function forwardChunk(from: Duplex, to: Duplex | undefined, chunk: Buffer, timers: SpliceTimers | undefined): void {
  timers?.moved()
  if (to === undefined || to.writableEnded || to.destroyed) from.pause()
  else if (!to.write(chunk)) {
    from.pause()
    timers?.waiting()
  }
}
