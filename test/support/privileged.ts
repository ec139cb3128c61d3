import { execFileSync } from 'node:child_process'
import { describe } from 'vitest'

/** True when the tests run as root, as privileged tests need. */
export const isRoot = process.getuid?.() === 0

function missingCommands(commands: readonly string[]): string[] {
  return commands.filter((command) => {
    try {
      execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' })
      return false
    } catch {
      return true
    }
  })
}

/**
 * Why a privileged suite cannot run here, or `undefined` when it can.
 * Under CI a reason is an error, never a skip: privileged tests must run there.
 */
export function privilegedSkipReason(commands: readonly string[] = ['ip']): string | undefined {
  const reasons: string[] = []
  if (!isRoot) reasons.push('not running as root')
  const missing = missingCommands(commands)
  if (missing.length > 0) reasons.push(`missing commands: ${missing.join(', ')} (run npm run setup)`)
  if (reasons.length === 0) return undefined
  const reason = reasons.join('; ')
  if (process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false') {
    throw new Error(`privileged tests cannot run under CI: ${reason}`)
  }
  return reason
}

/**
 * `describe` for tests that need root and real kernel tools. Skips with a
 * printed reason when they are unavailable; fails when `CI` is set.
 */
export function describePrivileged(name: string, commands: readonly string[], body: () => void): void {
  const reason = privilegedSkipReason(commands)
  if (reason === undefined) {
    describe(name, body)
  } else {
    console.warn(`[skip] ${name}: ${reason}`)
    describe.skip(`${name} (skipped: ${reason})`, body)
  }
}
