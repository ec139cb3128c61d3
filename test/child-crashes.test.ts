import { execFile } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { takeChildCrashes } from './support/child-crashes'

/** Runs a Node program with the environment tests give their children; resolves with its exit code. */
function runNode(source: string): Promise<number> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--input-type=module', '-e', source], (err) => resolve(err === null ? 0 : Number(err.code ?? 1)))
  })
}

describe('the crash harness for processes tests start', () => {
  it('records an uncaught exception in a child, with its stack, and leaves the crash to happen', async () => {
    expect(await runNode("setTimeout(() => { throw new Error('boom from a child') })")).not.toBe(0)
    const crashes = takeChildCrashes()
    expect(crashes).toHaveLength(1)
    expect(JSON.parse(crashes[0]!)).toMatchObject({ origin: 'uncaughtException', error: expect.stringContaining('boom from a child') })
  })

  it('records an unhandled rejection in a grandchild', async () => {
    const grandchild = "Promise.reject(new Error('rejected in a grandchild'))"
    const child = `import { execFileSync } from 'node:child_process'; try { execFileSync(process.execPath, ['--input-type=module', '-e', ${JSON.stringify(grandchild)}], { stdio: 'ignore' }) } catch {}`
    expect(await runNode(child)).toBe(0)
    const crashes = takeChildCrashes()
    expect(crashes).toHaveLength(1)
    expect(JSON.parse(crashes[0]!)).toMatchObject({ origin: 'unhandledRejection', error: expect.stringContaining('rejected in a grandchild') })
  })

  it('records nothing for a child that handles its errors and exits non-zero on purpose', async () => {
    expect(await runNode("try { throw new Error('handled') } catch { process.exitCode = 3 }")).toBe(3)
    expect(takeChildCrashes()).toEqual([])
  })
})
