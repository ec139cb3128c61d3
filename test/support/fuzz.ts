// Shared helpers of the fuzz suites (*.fuzz.test.ts). The ordinary suite
// runs every target briefly with a fixed seed; `npm run fuzz -- --runs N
// --seed S` (scripts/fuzz.mjs) runs them long through the same variables.
import { appendFileSync, readFileSync } from 'node:fs'
import fc from 'fast-check'
import { isAmbientError } from '@ambientkit/core'

/** The seed of every fuzz target: `AMBIENTKIT_FUZZ_SEED`, or a fixed one so the ordinary suite is repeatable. */
export const fuzzSeed = envInteger('AMBIENTKIT_FUZZ_SEED') ?? 20261207

/** How many inputs a target tries: `AMBIENTKIT_FUZZ_RUNS`, or the target's short default. */
export function fuzzRuns(short: number): number {
  return envInteger('AMBIENTKIT_FUZZ_RUNS') ?? short
}

/** How many frame sequences an HBONE fuzz target sends: `AMBIENTKIT_FUZZ_SEQUENCES`, or its short default. */
export function fuzzSequences(short: number): number {
  return envInteger('AMBIENTKIT_FUZZ_SEQUENCES') ?? short
}

/** True when a long run was asked for (targets then allow themselves more time). */
export const longRun = envInteger('AMBIENTKIT_FUZZ_RUNS') !== undefined || envInteger('AMBIENTKIT_FUZZ_SEQUENCES') !== undefined

/** A vitest timeout for a target: its short budget, or unbounded-enough for a long run. */
export function fuzzTimeout(shortMs: number): number {
  return longRun ? 24 * 3600_000 : shortMs
}

function envInteger(name: string): number | undefined {
  const text = process.env[name]
  if (text === undefined || text === '') return undefined
  if (!/^-?[0-9]+$/.test(text)) throw new Error(`${name} must be an integer, got ${JSON.stringify(text)}`)
  return Number(text)
}

/**
 * Records that `target` tried `inputs` inputs, for the table of the long
 * run (a JSON line appended to `AMBIENTKIT_FUZZ_REPORT` when it is set).
 */
export function recordInputs(target: string, inputs: number, extra: Record<string, unknown> = {}): void {
  const file = process.env.AMBIENTKIT_FUZZ_REPORT
  if (file === undefined || file === '') return
  appendFileSync(file, `${JSON.stringify({ target, inputs, seed: fuzzSeed, ...extra })}\n`)
}

type AnyProperty = fc.IProperty<unknown> | fc.IAsyncProperty<unknown>

/**
 * Checks a property with the run's seed and size (`runs` is the short
 * default; `parameters.numRuns` overrides), records how many inputs
 * it tried, and on failure throws fast-check's report (the counterexample,
 * its seed and path) followed by the command that replays it.
 */
export async function checkProperty(target: string, property: AnyProperty, runs: number, parameters: fc.Parameters<unknown> = {}): Promise<void> {
  const details = await fc.check(property as fc.IAsyncProperty<unknown>, { seed: fuzzSeed, numRuns: fuzzRuns(runs), ...parameters })
  recordInputs(target, details.numRuns + details.numShrinks, { shrinks: details.numShrinks })
  if (details.failed) {
    const report = fc.defaultReportMessage(details) ?? 'property failed'
    throw new Error(`${target}: ${report}\nReplay: AMBIENTKIT_FUZZ_SEED=${details.seed} npx vitest run <this file> -t ${JSON.stringify(target)}`, {
      cause: details.errorInstance,
    })
  }
}

let documented: Set<string> | undefined

/** Every error code docs/errors.md lists. */
export function documentedErrorCodes(): Set<string> {
  documented ??= new Set(readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8').match(/ERR_AMBIENT_[A-Z0-9_]+/g) ?? [])
  return documented
}

/**
 * Runs a parser on untrusted input: it may return, or throw an
 * `AmbientError` whose code is one of `codes` and listed in docs/errors.md;
 * anything else (a TypeError, a RangeError from a library) fails the property.
 */
export function parseOrRefuse<T>(codes: readonly string[], parse: () => T): { ok: true; value: T } | { ok: false; code: string } {
  try {
    return { ok: true, value: parse() }
  } catch (err) {
    if (!isAmbientError(err)) throw new Error(`threw something other than an AmbientError: ${String(err)}`, { cause: err })
    if (!codes.includes(err.code)) throw new Error(`threw ${err.code}, expected one of ${codes.join(', ')}: ${err.message}`, { cause: err })
    if (!documentedErrorCodes().has(err.code)) throw new Error(`threw ${err.code}, which docs/errors.md does not list`, { cause: err })
    return { ok: false, code: err.code }
  }
}
