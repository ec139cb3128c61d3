import { execFile, execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { expect, it } from 'vitest'
import { describePrivileged } from '../../test/support/privileged'
import { isAlive } from '../lib/proc'

/** bench/dns.ts still runs end to end and reports every figure. Shape only: a test never judges speed. */

const root = fileURLToPath(new URL('../..', import.meta.url))
const summaryShape = { median: expect.any(Number), min: expect.any(Number), max: expect.any(Number), p90: expect.any(Number), p99: expect.any(Number), runs: 1 }

describePrivileged('bench/dns.ts --quick', ['ip', 'nft', 'dnsmasq', 'dnsperf'], () => {
  it('measures the direct, registry and forwarded paths with dnsperf, and leaves no namespace behind', { timeout: 120_000 }, async () => {
    const stdout = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--import', 'tsx', 'bench/dns.ts', '--quick', '--json'], { cwd: root, env: { ...process.env, TSX_TSCONFIG_PATH: `${root}tsconfig.json` }, timeout: 110_000 }, (err, out, stderr) => {
        if (err !== null) reject(new Error(`bench/dns.ts failed: ${stderr.slice(-4000)}`, { cause: err }))
        else resolve(out)
      })
    })
    const { results } = JSON.parse(stdout) as { results: Record<string, { queriesPerSecond: { median: number }; lost: number }> }
    expect(Object.keys(results)).toEqual(['direct', 'registry', 'forwarded'])
    for (const [path, result] of Object.entries(results)) {
      expect(result, path).toMatchObject({ queriesPerSecond: summaryShape, latencyUs: { p50: summaryShape, p99: summaryShape } })
      expect(result.queriesPerSecond.median, path).toBeGreaterThan(0)
      expect(result.lost, `${path}: every query answered`).toBe(0)
    }
    expect(results.direct).toMatchObject({ proxyCpuUsPerQuery: null })
    expect(results.forwarded).toMatchObject({ proxyCpuUsPerQuery: summaryShape })
    // The bench has exited: a namespace named after a pid that no longer runs is one it left behind.
    const names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n')
    expect(names.filter((line) => /^ak-bdns-(\d+)-/.test(line) && !isAlive(Number(/^ak-bdns-(\d+)-/.exec(line)![1])))).toEqual([])
  })
})
