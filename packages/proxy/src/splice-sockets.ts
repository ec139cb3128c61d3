import type { Socket } from 'node:net'
import { forwardChunk, SpliceTimers, type TunnelTimeouts } from './splice-timers'

/** What {@link spliceSockets} resolves with. */
export interface SocketSpliceResult {
  /** `closed` when both sides finished cleanly, `reset` when either failed or was reset. */
  readonly outcome: 'closed' | 'reset'
  /** With `reset`: the side that failed or was reset first. */
  readonly resetFirst?: 'a' | 'b'
  /** Bytes from `a` to `b`. */
  readonly aToB: number
  /** Bytes from `b` to `a`. */
  readonly bToA: number
  readonly error?: Error
}

/**
 * Copies bytes both ways between two TCP sockets with backpressure until
 * both are closed. A FIN on one side becomes a FIN on the other (half-close
 * kept); an error or reset on one side resets the other, so neither
 * outlives its peer.
 */
export function spliceSockets(a: Socket, b: Socket): Promise<SocketSpliceResult> {
  return new Promise((resolve) => startSocketSplice(a, b, resolve))
}

/**
 * {@link spliceSockets} with a callback: what the proxies use, so that an
 * idle connection holds no promise or suspended async function, only the
 * sockets and one {@link SocketSplice}. With `timeouts`, a splice idle or
 * stalled that long resets both sides (`a` counted as reset first) with
 * `ERR_AMBIENT_HBONE_TUNNEL_TIMEOUT`.
 */
export function startSocketSplice(a: Socket, b: Socket, done: (result: SocketSpliceResult) => void, timeouts?: TunnelTimeouts): void {
  a.allowHalfOpen = true
  b.allowHalfOpen = true
  if (a.destroyed || b.destroyed) {
    // One side is gone already (its 'close' will not come again): the other is reset at once.
    for (const socket of [a, b]) if (!socket.destroyed) socket.resetAndDestroy()
    done({ outcome: 'reset', resetFirst: a.destroyed ? 'a' : 'b', aToB: b.bytesWritten, bToA: a.bytesWritten })
    return
  }
  const splice = new SocketSplice(a, b, done, timeouts)
  for (const socket of [a, b]) {
    splices.set(socket, splice)
    socket.on('error', onError)
    socket.on('close', onClose)
    // What pipe() would do both ways, without its nine closures per direction.
    socket.on('data', onData)
    socket.on('drain', onDrain)
    socket.on('end', onEnd)
  }
  a.resume()
  b.resume()
}

/**
 * Two sockets being spliced. The event handlers are shared by every splice
 * and find theirs in {@link splices}, so an idle connection costs this
 * object rather than a dozen closures and `once` wrappers.
 */
class SocketSplice {
  open = 2
  resetFirst: 'a' | 'b' | undefined
  error: Error | undefined
  /** The idle and stall timers, when timeouts were given. */
  readonly timers: SpliceTimers | undefined

  constructor(
    readonly a: Socket,
    readonly b: Socket,
    readonly done: (result: SocketSpliceResult) => void,
    timeouts: TunnelTimeouts | undefined,
  ) {
    if (timeouts !== undefined) this.timers = new SpliceTimers(timeouts, (error) => this.expire(error))
  }

  /** Resets both sides: the splice was idle or stalled too long. */
  expire(error: Error): void {
    this.error ??= error
    this.resetFirst ??= 'a'
    for (const socket of [this.a, this.b]) if (!socket.destroyed) socket.resetAndDestroy()
  }

  peer(side: Socket): Socket {
    return side === this.a ? this.b : this.a
  }

  settle(): void {
    if (--this.open > 0) return
    this.timers?.stop()
    const { a, b, error } = this
    splices.delete(a)
    splices.delete(b)
    const reset = this.resetFirst === undefined ? {} : { resetFirst: this.resetFirst }
    this.done({ outcome: this.resetFirst === undefined ? 'closed' : 'reset', ...reset, aToB: b.bytesWritten, bToA: a.bytesWritten, ...(error ? { error } : {}) })
  }
}

const splices = new WeakMap<Socket, SocketSplice>()

/** Copies a chunk to the other socket; pauses on backpressure (until its `drain`) and for good once that socket is finished. */
function onData(this: Socket, chunk: Buffer): void {
  const splice = splices.get(this)
  forwardChunk(this, splice?.peer(this), chunk, splice?.timers)
}

function onDrain(this: Socket): void {
  const splice = splices.get(this)
  splice?.timers?.drained()
  const other = splice?.peer(this)
  if (other !== undefined && !other.destroyed) other.resume()
}

function onEnd(this: Socket): void {
  splices.get(this)?.peer(this).end()
}

function onError(this: Socket, err: Error): void {
  const splice = splices.get(this)
  if (splice !== undefined) splice.error ??= err
}

function onClose(this: Socket): void {
  const splice = splices.get(this)
  if (splice === undefined) return
  if (!(this.readableEnded && this.writableFinished)) {
    splice.resetFirst ??= this === splice.a ? 'a' : 'b'
    const other = splice.peer(this)
    if (!other.destroyed) other.resetAndDestroy()
  }
  splice.settle()
}
