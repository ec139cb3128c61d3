import { constants as h2 } from 'node:http2'
import type { Socket } from 'node:net'
import type { HboneWindows } from './constants'
import { NativeOutcome, type NativeAddon, type NativeSession, type NativeSettings } from './native'
import type { SpliceOutcome, SpliceResult } from './splice'

/**
 * One tunnel of the native data path: an HTTP/2 stream the addon splices
 * with a TCP connection. JavaScript never sees its bytes; it can only reset
 * it, and hears how it ended.
 */
export class NativeTunnel {
  readonly #addon: NativeAddon
  readonly #session: NativeSession
  #result: SpliceResult | undefined
  #listener: ((result: SpliceResult) => void) | undefined

  constructor(addon: NativeAddon, session: NativeSession, readonly stream: number) {
    this.#addon = addon
    this.#session = session
  }

  /** True once the stream and its socket are closed. */
  get closed(): boolean {
    return this.#result !== undefined
  }

  /**
   * Resets the stream (RST_STREAM `CONNECT_ERROR`, as a proxy that lost its
   * TCP side sends) and its socket (RST). Named like `Socket.resetAndDestroy`,
   * which the Node data path calls on its sockets in the same places.
   */
  resetAndDestroy(): void {
    if (this.#result === undefined) this.#addon.resetStream(this.#session, this.stream, h2.NGHTTP2_CONNECT_ERROR)
  }

  /**
   * Calls `listener` once the tunnel has closed, at once if it already has.
   * One listener: whoever holds the tunnel once it is established.
   */
  onClose(listener: (result: SpliceResult) => void): void {
    if (this.#result !== undefined) listener(this.#result)
    else this.#listener = listener
  }

  /** The native client or server reports the stream's end (its `StreamClose`). */
  settle(result: SpliceResult): void {
    if (this.#result !== undefined) return
    this.#result = result
    const listener = this.#listener
    this.#listener = undefined
    listener?.(result)
  }
}

const OUTCOMES: Readonly<Record<NativeOutcome, SpliceOutcome>> = {
  [NativeOutcome.Closed]: 'closed',
  [NativeOutcome.SocketReset]: 'socket-reset',
  [NativeOutcome.StreamReset]: 'stream-reset',
  // Only a stream that never carried a tunnel ends this way: nothing reached its socket either.
  [NativeOutcome.Rejected]: 'stream-reset',
  [NativeOutcome.Refused]: 'stream-reset',
}

/** A `StreamClose` event's arguments as the {@link SpliceResult} the Node data path reports. */
export function spliceResultOf(outcome: unknown, bytesRead: unknown, bytesWritten: unknown, error: unknown): SpliceResult {
  return {
    outcome: OUTCOMES[outcome as NativeOutcome] ?? 'stream-reset',
    socketBytesRead: bytesRead as number,
    socketBytesWritten: bytesWritten as number,
    ...(typeof error === 'string' ? { error: new Error(error) } : {}),
  }
}

/** The settings tuple of a session with these windows. */
export function nativeSettings(windows: HboneWindows, maxConcurrentStreams: number): NativeSettings {
  return [windows.stream, windows.connection, windows.maxFrameSize, maxConcurrentStreams]
}

/**
 * Moves a connected socket from Node to the addon: a duplicate of its
 * descriptor for the addon, then the socket is destroyed (closing only
 * Node's descriptor; the connection stays open). Only for sockets Node never
 * read from (accepted with `pauseOnConnect`): bytes Node had read would be lost.
 * The socket emits `close` as usual.
 */
export function detachSocket(addon: NativeAddon, socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd
  if (typeof fd !== 'number' || fd < 0) throw new Error('the socket has no descriptor (closed already?)')
  const copy = addon.dupFd(fd)
  socket.destroy()
  return copy
}
