import { constants as h2 } from 'node:http2'
import { AmbientError } from '@ambientkit/core'
import type { TunnelOutcome, TunnelResult } from '../transport/contract'
import { SettlingTunnel } from '../transport/tunnel'
import type { HboneWindows } from './constants'
import { HboneErrorCode } from './errors'
import type { TunnelTimeouts } from '../splice-timers'
import { NativeOutcome, type NativeAddon, type NativeSession, type NativeSettings } from './native'

/**
 * One tunnel of the native data path: an HTTP/2 stream the addon splices
 * with a TCP connection. JavaScript never sees its bytes; it can only reset
 * it, and hears how it ended.
 */
export class NativeTunnel extends SettlingTunnel {
  readonly protocol = 'HBONE'
  readonly #addon: NativeAddon
  readonly #session: NativeSession

  constructor(addon: NativeAddon, session: NativeSession, readonly stream: number) {
    super()
    this.#addon = addon
    this.#session = session
  }

  /** Resets the stream (RST_STREAM `CONNECT_ERROR`, as a proxy that lost its TCP side sends) and its socket (RST). */
  reset(): void {
    if (!this.closed) this.#addon.resetStream(this.#session, this.stream, h2.NGHTTP2_CONNECT_ERROR)
  }
}

const OUTCOMES: Readonly<Record<NativeOutcome, TunnelOutcome>> = {
  [NativeOutcome.Closed]: 'closed',
  [NativeOutcome.SocketReset]: 'socket-reset',
  [NativeOutcome.StreamReset]: 'stream-reset',
  // Only a stream that never carried a tunnel ends this way: nothing reached its socket either.
  [NativeOutcome.Rejected]: 'stream-reset',
  [NativeOutcome.Refused]: 'stream-reset',
}

/** A `StreamClose` event's arguments as the {@link TunnelResult} the Node data path reports. */
export function spliceResultOf(outcome: unknown, bytesRead: unknown, bytesWritten: unknown, error: unknown): TunnelResult {
  return {
    outcome: OUTCOMES[outcome as NativeOutcome] ?? 'stream-reset',
    socketBytesRead: bytesRead as number,
    socketBytesWritten: bytesWritten as number,
    ...(typeof error === 'string' ? { error: errorOf(error) } : {}),
  }
}

/** The addon's reason a tunnel ended, as an error: its tunnel timeouts (pipe_check_timeouts) carry their code, as on the Node path. */
function errorOf(message: string): Error {
  return /\((tunnelIdleTimeout|tunnelStallTimeout)\)$/.test(message) ? new AmbientError(HboneErrorCode.TunnelTimeout, message) : new Error(message)
}

/** The settings tuple of a session with these windows, and the timeouts of its tunnels (none: a client's). */
export function nativeSettings(windows: HboneWindows, maxConcurrentStreams: number, timeouts?: TunnelTimeouts): NativeSettings {
  return [windows.stream, windows.connection, windows.maxFrameSize, maxConcurrentStreams, timeouts?.idle ?? 0, timeouts?.stall ?? 0]
}
