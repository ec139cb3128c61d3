import { expect, it } from 'vitest'
import { describePrivileged } from '../../test/support/privileged'
import { leftBehind, runBench as bench } from './run-bench'

/** The scale benches (bench/connections.ts, pods.ts, nft-descriptors.ts, soak.ts) still run end to end in a tiny configuration and report every figure. Shape only: a test never judges speed. */

describePrivileged('scale benches', ['ip', 'nft', 'prlimit'], () => {
  it('bench/connections.ts holds connections open through one node proxy and measures memory, descriptors and new-connection latency', { timeout: 180_000 }, async () => {
    const { connections, results } = (await bench('bench/connections.ts', ['--connections', '40'], 'Concurrent connections through one node proxy')) as {
      connections: number
      results: Record<string, { connections: number; fds: { before: number; open: number; after: number }; fdsPerConnection: number; kibPerConnection: number; latencyUs: { none: { p50: number }; open: { p99: number } } }>
    }
    expect(connections).toBe(40)
    expect(Object.keys(results).length).toBeGreaterThan(0)
    for (const [path, r] of Object.entries(results)) {
      // Every held connection costs the proxy descriptors (its app side and its peer; a few of the warm-up's may close meanwhile), and they are given back.
      expect(r.fds.open - r.fds.before, path).toBeGreaterThanOrEqual(40)
      expect(r.fds.after, path).toBeLessThan(r.fds.open)
      expect(r.kibPerConnection, path).toEqual(expect.any(Number))
      expect(r.latencyUs.none.p50, path).toBeGreaterThan(0)
      expect(r.latencyUs.open.p99, path).toBeGreaterThan(0)
    }
    expect(leftBehind()).toEqual([])
  })

  it('bench/pods.ts enrolls and removes pods in real namespaces and measures the cost per pod', { timeout: 180_000 }, async () => {
    const result = (await bench('bench/pods.ts', ['--pods', '3'], 'Pods enrolled on one node proxy')) as {
      enrolled: number
      removed: number
      stoppedBy?: string
      perPod: { sockets: number }
      before: { fds: number }
      after: { fds: number }
      enrollMsPerPodByBatch: number[]
    }
    expect(result.stoppedBy).toBeUndefined()
    expect(result).toMatchObject({ enrolled: 3, removed: 3 })
    expect(result.enrollMsPerPodByBatch).toHaveLength(3)
    // Each pod has its listeners inside its namespace, all closed on removal: what stays is the
    // proxy's own, opened once (the data path's), fewer than one a pod.
    expect(result.perPod.sockets).toBeGreaterThanOrEqual(1)
    expect(result.after.fds - result.before.fds).toBeLessThan(3)
    expect(leftBehind()).toEqual([])
  })

  it('bench/nft-descriptors.ts times in-process nft runs by descriptors held', { timeout: 180_000 }, async () => {
    const results = (await bench('bench/nft-descriptors.ts', ['--held', '0,200', '--runs', '3'], 'One in-process nft run')) as Array<{ held: number; ms: { median: number; runs: number } }>
    expect(results.map(({ held, ms }) => [held, ms.runs])).toEqual([
      [0, 3],
      [200, 3],
    ])
    for (const { ms } of results) expect(ms.median).toBeGreaterThan(0)
    expect(leftBehind()).toEqual([])
  })

  it('bench/soak.ts samples memory and descriptors under traffic and reports the drift per hour', { timeout: 180_000 }, async () => {
    const result = (await bench('bench/soak.ts', ['--duration', '4', '--interval', '2'], 'Soak of one node proxy')) as {
      connections: number
      errors: number
      samples: unknown[]
      drift: { rssMiBPerHour: number; fdsPerHour: number }
    }
    expect(result.samples.length).toBeGreaterThanOrEqual(3)
    expect(result.connections).toBeGreaterThan(0)
    expect(result.errors).toBe(0)
    expect(result.drift).toEqual({ rssMiBPerHour: expect.any(Number), fdsPerHour: expect.any(Number) })
    expect(leftBehind()).toEqual([])
  })
})
