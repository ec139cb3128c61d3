import { expect, it } from 'vitest'
import { nativeHboneThreads } from '@ambientkit/proxy'
import { describePrivileged } from '../../test/support/privileged'
import type { RpsResult } from '../rps'
import { leftBehind, runBench } from './run-bench'

/** bench/rps.ts still runs every path end to end and reports every figure. Shape only: a test never judges speed. */

const TITLE = 'Proxy CPU and memory per 1,000 HTTP/1.1 requests per second'

describePrivileged('bench/rps.ts --quick', ['ip', 'nft', 'stunnel4', 'haproxy'], () => {
  it('loads every path at a fixed rate, answers every request, and reports the proxies CPU and memory per 1,000 requests/s', { timeout: 180_000 }, async () => {
    const result = (await runBench('bench/rps.ts', ['--quick'], TITLE)) as RpsResult
    expect(result.quick).toBe(true)
    expect(result.settings).toMatchObject({ rates: [1000], connections: 10, size: 1024, dataPath: 'native', hboneThreads: nativeHboneThreads() })
    expect(result.runs.map((r) => r.path)).toEqual(['direct', 'stunnel', 'haproxy', 'meshSameNode', 'meshCrossNode'])
    for (const run of result.runs) {
      expect(run.rate, run.path).toBe(1000)
      // An open loop at 1,000/s for the quick run's 2 s: every request sent, and every one answered 200.
      expect(run.requests, run.path).toBe(2000)
      expect(run.failed, run.path).toBe(0)
      expect(run.perSecond, run.path).toBeGreaterThan(0)
      expect(run.serviceUs?.p50, run.path).toBeGreaterThan(0)
      // From when it was due is never shorter than from when it went out.
      expect(run.latencyUs!.p99, run.path).toBeGreaterThanOrEqual(run.serviceUs!.p99)
      expect(run.generatorCores, run.path).toBeGreaterThan(0)
    }
    const [direct, ...proxied] = result.runs
    expect(direct).toMatchObject({ proxies: 0, vcpuPer1k: null, busiestVcpuPer1k: null, rssIdleMiB: null, mibPer1k: null })
    for (const run of proxied) {
      // Two relays a path, or one node proxy for both pods on one node.
      expect(run.proxies, run.path).toBe(run.path === 'meshSameNode' ? 1 : 2)
      expect(run.vcpuPer1k, run.path).toBeGreaterThan(0)
      expect(run.busiestVcpuPer1k, run.path).toBeLessThanOrEqual(run.vcpuPer1k!)
      expect(run.rssIdleMiB, run.path).toBeGreaterThan(0)
      expect(run.rssLoadMiB, run.path).toBeGreaterThanOrEqual(run.rssIdleMiB!)
      expect(run.mibPer1k, run.path).toEqual(expect.any(Number))
    }
    expect(result.ratios.map((r) => [r.path, r.rate])).toEqual([
      ['meshSameNode', 1000],
      ['meshCrossNode', 1000],
    ])
    for (const ratio of result.ratios) {
      expect(ratio.vcpuPer1k, ratio.path).toBeGreaterThan(0)
      expect(ratio.rssLoad, ratio.path).toBeGreaterThan(0)
      expect(ratio.serviceP50, ratio.path).toBeGreaterThan(0)
    }
    expect(leftBehind()).toEqual([])
  })

  it('refuses a bad option, naming it and what it expects', async () => {
    await expect(runBench('bench/rps.ts', ['--data-path=kernel'], TITLE)).rejects.toThrow(/--data-path must be node or native, not "kernel"/)
    await expect(runBench('bench/rps.ts', ['--rates', '1000,fast'], TITLE)).rejects.toThrow(/--rates must be positive whole numbers .* got "1000,fast"/)
  })
})
