import { createWriteStream, writeSync } from 'node:fs'
import { parseArgs } from 'node:util'

/**
 * Tells the process that started this one that it is ready (or why it is
 * not): one JSON line on file descriptor 3, when the parent opened it, then
 * the descriptor is closed so the parent's read ends.
 */
export function signalParent(message: Record<string, unknown>): void {
  if (process.env.AKM_READY_FD === undefined) return
  try {
    const out = createWriteStream('', { fd: Number(process.env.AKM_READY_FD) })
    out.end(`${JSON.stringify(message)}\n`)
  } catch {
    // No parent listening: nothing to tell.
  }
}

/** Parses `--name value` options; every option is a string. */
export function options<K extends string>(names: readonly K[]): Record<K, string | undefined> {
  const { values } = parseArgs({ options: Object.fromEntries(names.map((n) => [n, { type: 'string' as const }])), strict: true })
  return values as Record<K, string | undefined>
}

/** Runs `stop` once on SIGTERM or SIGINT, then exits. */
export function onShutdown(stop: () => Promise<void>): void {
  let stopping = false
  const handler = (signal: NodeJS.Signals): void => {
    if (stopping) return
    stopping = true
    stop().then(
      () => process.exit(0),
      (err: unknown) => {
        console.error(`shutdown after ${signal} failed: ${(err as Error).message}`)
        process.exit(1)
      },
    )
  }
  process.on('SIGTERM', handler)
  process.on('SIGINT', handler)
}

/** How often lost log lines are reported, at most. */
const LOST_LINES_REPORT_INTERVAL_MS = 60_000

/** Where a program of the local mesh writes its log lines: see {@link createLogSink}. */
export interface LogSink {
  /** Writes one line; never throws. */
  write(line: string): void
  /** Lines the file refused (a full or read-only disk) since the start. */
  readonly lostLines: number
}

/**
 * Log lines to a file descriptor (stdout, which the demo points at a log
 * file), written synchronously so none is lost in a crash. A line the disk
 * refuses is dropped and counted rather than thrown at whoever logged it:
 * a full log disk never stops a node. Once lines get through again, the
 * count and the last error are written, at most once a minute. Errors on
 * `process.stdout` itself (a `console.log` somewhere) are counted too, so
 * they are never an unhandled `'error'` event.
 */
export function createLogSink(fd = 1): LogSink {
  let lost = 0
  let unreported = 0
  let lastError: string | undefined
  let lastReport = Number.NEGATIVE_INFINITY
  const refused = (err: unknown): void => {
    lost++
    unreported++
    lastError = (err as Error).message
  }
  if (fd === 1) process.stdout.on('error', refused)
  const writeLine = (line: string): boolean => {
    try {
      writeSync(fd, line)
      return true
    } catch (err) {
      refused(err)
      return false
    }
  }
  return {
    write(line) {
      if (!writeLine(line) || unreported === 0) return
      const now = performance.now()
      if (now - lastReport < LOST_LINES_REPORT_INTERVAL_MS) return
      lastReport = now
      const report = { level: 'error', time: Date.now(), lostLines: unreported, lastError, msg: 'log lines lost: the log file refused them (reported at most once a minute)' }
      if (writeLine(`${JSON.stringify(report)}\n`)) unreported = 0
    },
    get lostLines() {
      return lost
    },
  }
}
