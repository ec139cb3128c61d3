import type { Settings } from 'node:http2'
import { invalidArgument } from '@ambientkit/core'
import { DEFAULT_HBONE_WINDOWS, type HboneWindows } from './constants'

const MAX_WINDOW = 2 ** 31 - 1
const MiB = 1024 * 1024

/** Fills defaults into partial windows and checks them against RFC 9113 §6.5.2 limits. */
export function resolveWindows(windows: Partial<HboneWindows> | undefined, name: string): HboneWindows {
  const resolved = { ...DEFAULT_HBONE_WINDOWS, ...windows }
  const check = (key: keyof HboneWindows, min: number, max: number): void => {
    const value = resolved[key]
    if (!Number.isInteger(value) || value < min || value > max) {
      throw invalidArgument(`${name}.${key}`, value, `an integer ${min}-${max}`)
    }
  }
  check('stream', 65_535, MAX_WINDOW)
  check('connection', 65_535, MAX_WINDOW)
  check('maxFrameSize', 16_384, 16_777_215)
  return resolved
}

/** The SETTINGS we send for these windows. */
export function localSettings(windows: HboneWindows, maxConcurrentStreams?: number): Settings {
  return {
    initialWindowSize: windows.stream,
    maxFrameSize: windows.maxFrameSize,
    enablePush: false,
    ...(maxConcurrentStreams === undefined ? {} : { maxConcurrentStreams }),
  }
}

/**
 * Node refuses new streams once a session buffers more than
 * `maxSessionMemory` MB; a peer may legitimately fill the whole connection
 * window, so leave room for it twice over.
 */
export function sessionMemoryFor(windows: HboneWindows): number {
  return Math.ceil(windows.connection / MiB) * 2 + 16
}

/** Checks an optional positive integer option, returning its default when absent. */
export function positiveInteger(value: unknown, name: string, fallback: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
    throw invalidArgument(name, value, `an integer 1-${max}`)
  }
  return value
}
