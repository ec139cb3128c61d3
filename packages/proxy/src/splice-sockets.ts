import type { Socket } from 'node:net'

/** What {@link spliceSockets} resolves with. */
export interface SocketSpliceResult {
  /** `closed` when both sides finished cleanly, `reset` when either failed or was reset. */
  readonly outcome: 'closed' | 'reset'
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
  a.allowHalfOpen = true
  b.allowHalfOpen = true
  return new Promise((resolve) => {
    let open = 2
    let reset = false
    let error: Error | undefined
    const onClose = (self: Socket, other: Socket) => () => {
      if (!(self.readableEnded && self.writableFinished)) {
        reset = true
        if (!other.destroyed) other.resetAndDestroy()
      }
      if (--open === 0) resolve({ outcome: reset ? 'reset' : 'closed', aToB: b.bytesWritten, bToA: a.bytesWritten, ...(error ? { error } : {}) })
    }
    const onError = (err: Error): void => {
      error ??= err
    }
    a.on('error', onError)
    b.on('error', onError)
    a.on('close', onClose(a, b))
    b.on('close', onClose(b, a))
    a.pipe(b)
    b.pipe(a)
    if (a.isPaused()) a.resume()
    if (b.isPaused()) b.resume()
  })
}
