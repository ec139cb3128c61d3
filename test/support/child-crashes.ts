// A vitest setup file (vitest.config.ts): every Node process a test starts,
// directly or through others (the local mesh's control plane and agents, the
// demo, helpers of privileged tests), inherits NODE_OPTIONS with a preload that
// records its uncaught exceptions and unhandled rejections; after each test and
// each file, any recorded one fails the run with the process and the stack.
import { chmodSync, copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, afterEach } from 'vitest'

/** The variable naming where the preload records crashes. */
export const CRASH_DIR_ENV = 'AMBIENTKIT_CRASH_DIR'

function install(): string {
  const existing = process.env[CRASH_DIR_ENV]
  if (existing !== undefined && existing !== '') return existing
  // Outside the checkout, readable and writable by every user: a process
  // that drops to nobody can neither read a private checkout nor write to it.
  const dir = mkdtempSync(join(tmpdir(), 'ambientkit-crashes-'))
  chmodSync(dir, 0o1777)
  const guard = join(dir, 'crash-guard.mjs')
  copyFileSync(fileURLToPath(new URL('./crash-guard.mjs', import.meta.url)), guard)
  chmodSync(guard, 0o644)
  process.env[CRASH_DIR_ENV] = dir
  process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --import=${guard}`.trim()
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const dir = install()

/** The crashes recorded since the last call (their files are removed). */
export function takeChildCrashes(): string[] {
  const crashes: string[] = []
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.crash'))) {
    const path = join(dir, file)
    crashes.push(...readFileSync(path, 'utf8').trimEnd().split('\n'))
    rmSync(path, { force: true })
  }
  return crashes
}

function check(when: string): void {
  const crashes = takeChildCrashes()
  if (crashes.length === 0) return
  const shown = crashes.map((line) => {
    try {
      const { pid, argv, origin, error } = JSON.parse(line) as { pid: number; argv: string[]; origin: string; error: string }
      return `pid ${pid} (${argv.join(' ')}), ${origin}:\n${error}`
    } catch {
      return line
    }
  })
  throw new Error(`${crashes.length} uncaught exception(s) or unhandled rejection(s) in processes started ${when}:\n\n${shown.join('\n\n')}`)
}

afterEach(() => check('by this test'))
afterAll(() => check('by this file'))
