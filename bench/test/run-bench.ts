import { execFile, execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { expect } from 'vitest'
import { isAlive } from '../lib/proc'

/** Running a bench file from a test, as its user would: shape only, a test never judges speed. */

const root = fileURLToPath(new URL('../..', import.meta.url))

/** Runs a bench with --json; returns its result, after checking it printed its table (on stderr, with --json) under `title`. */
export function runBench(file: string, args: readonly string[], title: string, timeout = 150_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', 'tsx', file, ...args, '--json'], { cwd: root, env: { ...process.env, TSX_TSCONFIG_PATH: `${root}tsconfig.json` }, timeout }, (err, out, stderr) => {
      if (err !== null) return reject(new Error(`${file} failed: ${stderr.slice(-4000)}`, { cause: err }))
      try {
        expect(stderr).toContain(title)
        expect(stderr).toMatch(/\n-+ {2}-+/)
        resolve(JSON.parse(out))
      } catch (failure) {
        reject(failure as Error)
      }
    })
  })
}

/** Namespaces named after a bench pid that no longer runs: ones a bench left behind. */
export function leftBehind(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => /^akb-(\d+)-/.test(line) && !isAlive(Number(/^akb-(\d+)-/.exec(line)![1])))
}
