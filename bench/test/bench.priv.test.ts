import { execFile } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { expect, it } from 'vitest'
import { nativeHboneThreads } from '@ambientkit/proxy'
import { describePrivileged } from '../../test/support/privileged'
import { isAlive } from '../lib/proc'
import { SCENARIOS, type BenchResult } from '../lib/results'

/**
 * The bench still runs end to end and its JSON carries every figure. Shape
 * only: a test never judges speed (the bench does, in its targets table).
 */

const root = fileURLToPath(new URL('../..', import.meta.url))

function runQuickBench(...flags: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['bench/run.mjs', '--quick', '--json', '--skip-extras', ...flags], { cwd: root, maxBuffer: 64 * 1024 * 1024, timeout: 170_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`bench --quick failed: ${stderr.slice(-4000)}`, { cause: err }))
      else resolve({ stdout, stderr })
    })
  })
}

/** Processes (command lines) started from a config file whose directory no longer exists: relays a bench run left behind. */
function orphanedRelays(): string[] {
  const out: string[] = []
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    let argv: string[]
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    } catch {
      continue // exited meanwhile
    }
    const config = argv.find((arg) => /\/akb-[^/]+\/(haproxy-(client|server)\.cfg|(client|server)\.conf)$/.test(arg))
    if (config !== undefined && !existsSync(dirname(config))) out.push(argv.join(' ').trim())
  }
  return out
}

const summaryShape = { median: expect.any(Number), min: expect.any(Number), max: expect.any(Number), p90: expect.any(Number), p99: expect.any(Number), runs: expect.any(Number) }

describePrivileged('bench --quick', ['ip', 'iperf3', 'stunnel4', 'haproxy', 'nft', 'iptables-restore'], () => {
  it('runs every scenario and reports every figure in its JSON, then leaves no namespace behind', { timeout: 180_000 }, async () => {
    const { stdout } = await runQuickBench()
    const result = JSON.parse(stdout) as BenchResult

    expect(result.version).toBe(1)
    expect(result.quick).toBe(true)
    expect(result.machine).toMatchObject({ cpuModel: expect.any(String), cores: expect.any(Number), kernel: expect.any(String), node: process.version })
    expect(Object.keys(result.scenarios).sort()).toEqual(SCENARIOS.map((s) => s.key).sort())
    for (const { key } of SCENARIOS) {
      const s = result.scenarios[key]
      expect(s.throughput1Gbps, key).toMatchObject(summaryShape)
      expect(s.throughput8Gbps, key).toMatchObject(summaryShape)
      expect(s.latencyUs, key).toMatchObject({ p50: summaryShape, p90: summaryShape, p99: summaryShape })
      expect(s.connectionsPerSecond, key).toMatchObject(summaryShape)
      // Every run moved data and completed round trips: no figure is a NaN from an empty sample.
      for (const figure of [s.throughput1Gbps, s.throughput8Gbps, s.latencyUs.p50, s.latencyUs.p99, s.connectionsPerSecond]) {
        expect(figure.runs, key).toBeGreaterThan(0)
        expect(figure.median, key).toBeGreaterThan(0)
      }
      if (key === 'direct') {
        expect(s.cpuSecondsPerGB).toBeNull()
        expect(s.rssKiB).toBeNull()
        expect(s.kibPerIdleConnection).toBeNull()
      } else {
        expect(s.cpuSecondsPerGB?.total, key).toMatchObject(summaryShape)
        expect(s.proxyCores, key).toMatchObject(summaryShape)
        expect(s.proxyRunQueueWait, key).toMatchObject(summaryShape)
        expect(s.cpuMsPerConnection, key).toMatchObject(summaryShape)
        expect(s.cpuUsPerRoundTrip, key).toMatchObject(summaryShape)
        expect(s.rssKiB?.idle, key).toMatchObject(summaryShape)
        expect(s.rssKiB?.withIdleConnections, key).toMatchObject(summaryShape)
        expect(s.rssKiB?.underLoad, key).toMatchObject(summaryShape)
        expect(s.kibPerIdleConnection, key).toMatchObject(summaryShape)
      }
    }
    // Client and server side are separate processes everywhere but on one node.
    expect(result.scenarios.stunnel.cpuSecondsPerGB?.client).toMatchObject(summaryShape)
    expect(result.scenarios.meshCrossNode.cpuSecondsPerGB?.server).toMatchObject(summaryShape)
    expect(result.scenarios.meshSameNode.cpuSecondsPerGB?.client).toBeNull()
    // The HAProxy reference is its relaying workers, one per pod, read like stunnel's processes.
    expect(result.scenarios.haproxy.cpuSecondsPerGB?.client).toMatchObject(summaryShape)
    expect(result.scenarios.haproxy.cpuSecondsPerGB?.server).toMatchObject(summaryShape)
    expect(result.machine.haproxy).toMatch(/^HAProxy \d+\.\d+/)

    for (const key of ['meshSameNode', 'meshCrossNode']) {
      for (const figure of ['throughput1', 'throughput8', 'latencyP50', 'latencyP99', 'connectionsPerSecond']) {
        expect(result.ratios[key]?.[figure], `${key} ${figure}`).toMatchObject({ vsDirect: expect.any(Number), vsStunnel: expect.any(Number) })
      }
    }
    for (const backend of ['nftables', 'iptables'] as const) {
      expect(result.capture[backend], backend).toMatchObject({ applyMs: summaryShape, removeMs: summaryShape })
    }
    expect(result.handshakesPerSecond).toMatchObject(summaryShape)
    // Every mesh connection went through HBONE: the same-node fast path is off by default,
    // and the tunnels ran on the native data path (the default where the addon is built, as setup does).
    expect(result.settings.sameNodeFastPath).toBe(false)
    expect(result.settings.dataPath).toBe('native')
    expect(result.settings.hboneThreads).toBe(nativeHboneThreads())
    expect(result.connectionsByProtocol['node-1']?.HBONE).toBeGreaterThan(0)
    expect(result.connectionsByProtocol['node-2']?.HBONE).toBeGreaterThan(0)
    expect(result.connectionsByProtocol['node-1']?.local).toBeUndefined()

    const targets = result.targets.map((t) => `${t.target} / ${t.scenario}`)
    for (const scenario of ['same node', 'cross node']) {
      for (const target of ['throughput, 1 stream ≥ stunnel', 'throughput, 8 streams ≥ stunnel', 'p50 latency added ≤ 25 µs', 'p99 latency ≤ 2× direct', 'connections/s ≥ 10× stunnel', '≤ 32 KiB per idle proxied connection']) {
        expect(targets).toContain(`${target} / ${scenario}`)
      }
    }
    expect(targets).toContain('capture apply ≤ 8 ms median / nftables')
    for (const t of result.targets) {
      expect(typeof t.met, t.target).toBe('boolean')
      if (!t.met) expect(t.why, t.target).toMatch(/\w/)
      // A missed latency or connection-rate target quotes what HAProxy reached in the same run.
      if (!t.met && /latency|connections/.test(t.target)) expect(t.why, t.target).toMatch(/HAProxy relaying plain TCP .* (added \+[\d.]+ µs at p50|had a p99 of [\d.]+ µs|made \d+ connections\/s)/)
    }

    const leftovers = await new Promise<string>((resolve, reject) =>
      execFile('ip', ['netns', 'list'], (err, out) => (err === null ? resolve(out) : reject(err))),
    )
    // Namespaces of a bench process that has exited are leaks (a bench running in parallel keeps its own).
    const leaked = leftovers.split('\n').filter((line) => {
      const match = /^akb-(\d+)-/.exec(line)
      return match !== null && !isAlive(Number(match[1]))
    })
    expect(leaked).toEqual([])
    // Nor a relay: HAProxy's master and worker, and stunnel, run from configs in the run's temporary directory, which is gone.
    expect(orphanedRelays()).toEqual([])
  })

  it('--same-node-fast-path hands same-node connections over in-process and still tunnels across nodes (on the Node data path)', { timeout: 180_000 }, async () => {
    const result = JSON.parse((await runQuickBench('--same-node-fast-path', '--data-path=node')).stdout) as BenchResult
    expect(result.settings.sameNodeFastPath).toBe(true)
    expect(result.settings.dataPath).toBe('node')
    expect(result.settings.hboneThreads).toBeUndefined()
    expect(result.connectionsByProtocol['node-1']?.local).toBeGreaterThan(0)
    expect(result.connectionsByProtocol['node-2']?.HBONE).toBeGreaterThan(0)
    expect(result.connectionsByProtocol['node-2']?.local).toBeUndefined()
    expect(result.scenarios.meshSameNode.throughput1Gbps.median).toBeGreaterThan(0)
  })

  it('refuses an unknown --data-path, naming it', async () => {
    const err = await runQuickBench('--data-path=kernel').catch((e: unknown) => e as Error)
    expect(err).toBeInstanceOf(Error)
    expect((err as Error).message).toMatch(/--data-path must be node or native, not "kernel"/)
  })
})
