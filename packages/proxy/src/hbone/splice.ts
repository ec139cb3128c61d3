import { constants as h2 } from 'node:http2'
import type { Http2Stream } from 'node:http2'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { TunnelOutcome, TunnelResult } from '../transport/contract'
import { forwardChunk, SpliceTimers, type TunnelTimeouts } from '../splice-timers'

export type { TunnelTimeouts } from '../splice-timers'

/**
 * Copies bytes both ways between a TCP socket and an HBONE tunnel (an
 * HTTP/2 `CONNECT` stream) with backpressure, until both are closed.
 *
 * Half-close is kept: the socket's FIN becomes END_STREAM on the tunnel and
 * the tunnel's END_STREAM becomes a FIN, each direction draining on its own.
 * A reset is propagated (RFC 9113 §8.5): a TCP error or RST resets the stream
 * with `CONNECT_ERROR`, and a stream reset (or a dying session) resets the
 * TCP connection (RST, not FIN), so neither side outlives the other.
 *
 * The socket's `allowHalfOpen` is switched on, because Node would otherwise
 * end the socket's writable side as soon as its readable side ends.
 *
 * @param socket - a connected TCP socket (the application's or the upstream's)
 * @param tunnel - the HTTP/2 stream, after a 200 response was sent or received
 * @returns resolves (never rejects) once both the socket and the stream are closed
 */
export function spliceTunnel(socket: Socket, tunnel: Duplex): Promise<TunnelResult> {
  return new Promise((resolve) => startTunnelSplice(socket, tunnel, resolve))
}

/**
 * {@link spliceTunnel} with a callback: what the proxies use, so that an idle
 * tunnel holds no promise or suspended async function, only the sockets and
 * one {@link TunnelSplice}.
 */
export function startTunnelSplice(socket: Socket, tunnel: Duplex, done: (result: TunnelResult) => void, timeouts?: TunnelTimeouts): void {
  const stream = tunnel as Http2Stream
  socket.allowHalfOpen = true
  if (stream.destroyed || socket.destroyed) {
    const outcome: TunnelOutcome = stream.destroyed ? 'stream-reset' : 'socket-reset'
    resetSocket(socket)
    resetTunnel(stream)
    done({ outcome, socketBytesRead: socket.bytesRead, socketBytesWritten: socket.bytesWritten })
    return
  }
  const splice = new TunnelSplice(socket, stream, done, timeouts)
  splices.set(socket, splice)
  splices.set(stream, splice)
  socket.on('error', onError)
  stream.on('error', onError)
  socket.on('close', onSocketClose)
  stream.on('close', onStreamClose)
  // A reset stream still ends its readable side; that must not become a FIN.
  stream.on('aborted', onStreamAborted)
  stream.on('end', onStreamEnd)
  socket.on('end', onSocketEnd)
  // What pipe() would do both ways, without its nine closures per direction.
  socket.on('data', onData)
  stream.on('data', onData)
  socket.on('drain', onDrain)
  stream.on('drain', onDrain)
  socket.resume()
  stream.resume()
}

/**
 * One tunnel being spliced. The event handlers are shared by every tunnel
 * and find theirs in {@link splices}, so an idle tunnel costs this object
 * rather than a dozen closures and `once` wrappers.
 */
class TunnelSplice {
  outcome: TunnelOutcome | undefined
  error: Error | undefined
  open = 2
  /** The idle and stall timers, when the server sets timeouts. */
  readonly timers: SpliceTimers | undefined

  constructor(
    readonly socket: Socket,
    readonly stream: Http2Stream,
    readonly done: (result: TunnelResult) => void,
    timeouts: TunnelTimeouts | undefined,
  ) {
    if (timeouts !== undefined) this.timers = new SpliceTimers(timeouts, (error) => this.expire(error))
  }

  /** Resets both sides: the tunnel was idle or stalled too long. */
  expire(error: Error): void {
    this.error ??= error
    this.outcome ??= 'stream-reset'
    resetTunnel(this.stream)
    resetSocket(this.socket)
  }

  /** The other side of `side`. */
  peer(side: object): Duplex {
    return side === this.socket ? this.stream : this.socket
  }

  settle(): void {
    if (--this.open > 0) return
    this.timers?.stop()
    splices.delete(this.socket)
    splices.delete(this.stream)
    const { socket } = this
    this.done({ outcome: this.outcome ?? 'closed', error: this.error, socketBytesRead: socket.bytesRead, socketBytesWritten: socket.bytesWritten })
  }
}

const splices = new WeakMap<object, TunnelSplice>()

/** Copies a chunk to the other side; pauses on backpressure (until its `drain`) and for good once that side is finished. */
function onData(this: Duplex, chunk: Buffer): void {
  const splice = splices.get(this)
  forwardChunk(this, splice?.peer(this), chunk, splice?.timers)
}

function onDrain(this: Duplex): void {
  const splice = splices.get(this)
  splice?.timers?.drained()
  const other = splice?.peer(this)
  if (other !== undefined && !other.destroyed) other.resume()
}

function onError(this: Duplex, err: Error): void {
  const splice = splices.get(this)
  if (splice !== undefined) splice.error ??= err
}

function onSocketEnd(this: Socket): void {
  splices.get(this)?.stream.end()
}

function onSocketClose(this: Socket): void {
  const splice = splices.get(this)
  if (splice === undefined) return
  const clean = this.readableEnded && this.writableFinished
  if (!clean) {
    splice.outcome ??= 'socket-reset'
    resetTunnel(splice.stream)
  }
  splice.settle()
}

function onStreamClose(this: Http2Stream): void {
  const splice = splices.get(this)
  if (splice === undefined) return
  const clean = this.rstCode === h2.NGHTTP2_NO_ERROR && this.readableEnded && this.writableFinished
  if (!clean) {
    splice.outcome ??= 'stream-reset'
    resetSocket(splice.socket)
  }
  splice.settle()
}

function onStreamAborted(this: Http2Stream): void {
  const splice = splices.get(this)
  if (splice !== undefined) resetSocket(splice.socket)
}

function onStreamEnd(this: Http2Stream): void {
  const splice = splices.get(this)
  if (splice === undefined) return
  if (this.rstCode === h2.NGHTTP2_NO_ERROR) splice.socket.end()
  else resetSocket(splice.socket)
}

/**
 * Resets a TCP socket (RST), or only closes it once its FIN was already
 * sent: libuv refuses to reset a socket whose write side is shut down (and
 * Node then drops the handle without closing it). This happens when a peer
 * sends END_STREAM and then RST_STREAM, as Node's own `Http2Stream.close()`
 * does.
 */
function resetSocket(socket: Socket): void {
  if (socket.destroyed) return
  if (socket.writableEnded) socket.destroy()
  else socket.resetAndDestroy()
}

const EMPTY = Buffer.alloc(0)

/**
 * Resets a tunnel with a bare RST_STREAM (default `CONNECT_ERROR`, the code
 * RFC 9113 §8.5 gives a proxy that lost its TCP connection).
 *
 * Node's `Http2Stream.close(code)` first half-closes the stream: unless a
 * write is still queued, the peer receives END_STREAM and only then
 * RST_STREAM, and would forward a FIN before it learns of the reset. A
 * queued empty write makes Node send the RST_STREAM first.
 *
 * @param tunnel - an HBONE stream (client or server side)
 * @param code - the HTTP/2 error code. Default `NGHTTP2_CONNECT_ERROR`.
 */
export function resetTunnel(tunnel: Duplex, code: number = h2.NGHTTP2_CONNECT_ERROR): void {
  const stream = tunnel as Http2Stream
  if (stream.destroyed || stream.closed) return
  if (!stream.writableEnded) stream.write(EMPTY)
  stream.close(code)
}
