import { createWriteStream } from 'node:fs'
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
