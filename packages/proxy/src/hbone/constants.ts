export { HBONE_PORT } from '@ambientkit/core'

/** 1 MiB. */
const MiB = 1024 * 1024

/**
 * Default HTTP/2 flow-control windows and frame size for HBONE sessions.
 * The windows follow ztunnel's defaults (4 MiB per stream, 16 MiB per
 * connection) so one tunnel can keep a fast link busy; the frame size is
 * HTTP/2's default 16 KiB, chosen by measurement (see docs/proxy.md, HBONE).
 */
export const DEFAULT_HBONE_WINDOWS: Readonly<HboneWindows> = Object.freeze({
  stream: 4 * MiB,
  connection: 16 * MiB,
  maxFrameSize: 16 * 1024,
})

/** HTTP/2 flow-control settings of an HBONE session (both client and server). */
export interface HboneWindows {
  /** SETTINGS_INITIAL_WINDOW_SIZE: bytes a peer may send on one stream before a WINDOW_UPDATE. */
  readonly stream: number
  /** The connection-level receive window (sent as a WINDOW_UPDATE on stream 0). */
  readonly connection: number
  /** SETTINGS_MAX_FRAME_SIZE: the largest DATA frame payload we accept (16384–16777215). */
  readonly maxFrameSize: number
}
