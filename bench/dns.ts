/**
 * `npx tsx bench/dns.ts [--quick] [--json]`: what the DNS proxy of a
 * captured pod costs, measured with dnsperf (a DNS load generator we did
 * not write) from inside pods, against dnsmasq as the upstream resolver.
 *
 * Three paths, interleaved round by round:
 * - direct: a pod without capture asks the resolver itself;
 * - registry: a captured pod asks for a mesh name, which its DNS proxy
 *   answers from the registry;
 * - forwarded: a captured pod asks for another name, which its DNS proxy
 *   forwards to the resolver (a fresh marked socket per query).
 *
 * For each: queries per second with 8 clients and 100 queries in flight
 * (the most the path takes), p50 and p99 latency at a fixed 1000 queries
 * per second (the latency of a path that is not saturated), and the
 * proxy's CPU time per query (it runs in this process). Namespaces are
 * named `ak-bdns-<pid>-…` and always deleted, also on failure or Ctrl-C.
 */
import { execFile, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createWorkloadRegistry, type Workload } from '@ambientkit/core'
import { createDnsProxy, type DnsProxy } from '@ambientkit/proxy'
import { applyCapture, openNetns, type Netns } from '@ambientkit/redirect'
import { startDnsmasq, stopProcess } from '../test/support/dns'
import { createTestNetwork, type TestPod } from '../test/support/netns'
import { formatSummary, quantile, summarize, type Summary } from './lib/stats'
import { formatTable, wantsJson } from './lib/table'

const quick = process.argv.includes('--quick')
const SETTINGS = quick ? { rounds: 1, throughputSeconds: 1, latencySeconds: 1, latencyQps: 1000 } : { rounds: 3, throughputSeconds: 5, latencySeconds: 3, latencyQps: 1000 }
const MESH_NAME = 'api.shop.svc.cluster.local'
/** A name the resolver (test/support/dns.ts's dnsmasq) answers itself. */
const OUTSIDE_NAME = 'outside.test'

const log = (message: string): void => {
  if (!wantsJson) process.stderr.write(`bench/dns: ${message}\n`)
}

type PathKey = 'direct' | 'registry' | 'forwarded'
const PATHS: ReadonlyArray<{ key: PathKey; label: string }> = [
  { key: 'direct', label: 'direct to the resolver' },
  { key: 'registry', label: 'proxy, from the registry' },
  { key: 'forwarded', label: 'proxy, forwarded' },
]

interface PathResult {
  label: string
  queriesPerSecond: Summary
  latencyUs: { p50: Summary; p99: Summary }
  /** CPU time of this process (the DNS proxy) per query, in microseconds; null for the direct path. */
  proxyCpuUsPerQuery: Summary | null
  lost: number
}

/** Runs dnsperf inside `pod` and resolves with what it printed. */
function dnsperf(pod: TestPod, args: readonly string[], seconds: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('nsenter', [`--net=${pod.path}`, 'dnsperf', ...args], { timeout: (seconds + 30) * 1000, maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`dnsperf ${args.join(' ')}: ${stderr.trim() || err.message}`, { cause: err }))
      else resolve(stdout)
    })
  })
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the DNS bench creates network namespaces: run it as root')
  const network = createTestNetwork('ak-bdns')
  const dir = mkdtempSync(join(tmpdir(), 'ak-bdns-'))
  const handles: Netns[] = []
  let dnsmasq: ChildProcess | undefined
  let proxy: DnsProxy | undefined
  const cleanup = async (): Promise<void> => {
    await proxy?.close()
    await stopProcess(dnsmasq)
    for (const handle of handles) await handle.close()
    await network.cleanup()
    rmSync(dir, { recursive: true, force: true })
  }
  const interrupted = (): void => {
    void cleanup().finally(() => process.exit(130))
  }
  process.once('SIGINT', interrupted)
  process.once('SIGTERM', interrupted)
  try {
    log('building namespaces and starting dnsmasq')
    const node = await network.addNode()
    const captured = await network.addPod(node)
    const plain = await network.addPod(node)
    const resolver = await network.addPod(node)
    const netns = openNetns(captured.path)
    handles.push(netns)
    await applyCapture(netns, { captureDns: true }, { backend: 'nftables' })
    dnsmasq = await startDnsmasq(resolver)
    const registry = createWorkloadRegistry()
    registry.upsertService({ hostname: MESH_NAME, namespace: 'shop', vips: ['10.96.0.10'], ports: { 80: 8080 }, endpoints: [] })
    const workload: Workload = { uid: 'bench', name: 'bench', namespace: 'shop', serviceAccount: 'bench', node: 'node-1', addresses: [captured.ipv4], protocol: 'HBONE', labels: {} }
    proxy = await createDnsProxy({ workload, netns, registry, upstreams: [resolver.ipv4] })

    const files: Record<PathKey, string> = { direct: join(dir, 'outside'), registry: join(dir, 'mesh'), forwarded: join(dir, 'outside') }
    writeFileSync(files.registry, `${MESH_NAME} A\n`)
    writeFileSync(files.direct, `${OUTSIDE_NAME} A\n`)
    const client: Record<PathKey, TestPod> = { direct: plain, registry: captured, forwarded: captured }
    const samples = Object.fromEntries(PATHS.map(({ key }) => [key, { qps: [] as number[], p50: [] as number[], p99: [] as number[], cpu: [] as number[], lost: 0 }])) as Record<
      PathKey,
      { qps: number[]; p50: number[]; p99: number[]; cpu: number[]; lost: number }
    >

    for (let round = 1; round <= SETTINGS.rounds; round++) {
      for (const { key } of PATHS) {
        log(`round ${round}/${SETTINGS.rounds}: ${key}`)
        const base = ['-s', resolver.ipv4, '-d', files[key], '-t', '2']
        const cpuBefore = process.cpuUsage()
        const load = await dnsperf(client[key], [...base, '-l', String(SETTINGS.throughputSeconds), '-c', '8', '-q', '100'], SETTINGS.throughputSeconds)
        const cpu = process.cpuUsage(cpuBefore)
        const qps = Number(/Queries per second:\s+([\d.]+)/.exec(load)?.[1])
        const completed = Number(/Queries completed:\s+(\d+)/.exec(load)?.[1])
        samples[key].lost += Number(/Queries lost:\s+(\d+)/.exec(load)?.[1] ?? 0)
        samples[key].qps.push(qps)
        if (key !== 'direct' && completed > 0) samples[key].cpu.push((cpu.user + cpu.system) / completed)
        const paced = await dnsperf(client[key], [...base, '-l', String(SETTINGS.latencySeconds), '-Q', String(SETTINGS.latencyQps), '-v'], SETTINGS.latencySeconds)
        const latencies = [...paced.matchAll(/^> NOERROR \S+ A ([\d.]+)$/gm)].map((m) => Number(m[1]) * 1e6).sort((a, b) => a - b)
        if (latencies.length === 0) throw new Error(`${key}: dnsperf reported no answered query:\n${paced.slice(-2000)}`)
        samples[key].p50.push(quantile(latencies, 0.5))
        samples[key].p99.push(quantile(latencies, 0.99))
      }
    }

    const results = Object.fromEntries(
      PATHS.map(({ key, label }): [PathKey, PathResult] => [
        key,
        {
          label,
          queriesPerSecond: summarize(samples[key].qps),
          latencyUs: { p50: summarize(samples[key].p50), p99: summarize(samples[key].p99) },
          proxyCpuUsPerQuery: samples[key].cpu.length > 0 ? summarize(samples[key].cpu) : null,
          lost: samples[key].lost,
        },
      ]),
    ) as Record<PathKey, PathResult>
    if (wantsJson) {
      process.stdout.write(`${JSON.stringify({ settings: SETTINGS, results }, null, 2)}\n`)
      return
    }
    const rows = [['path', 'queries/s (±spread)', 'p50 µs', 'p99 µs', 'proxy CPU µs/query', 'lost']]
    for (const { key } of PATHS) {
      const r = results[key]
      rows.push([r.label, formatSummary(r.queriesPerSecond, 0), r.latencyUs.p50.median.toFixed(0), r.latencyUs.p99.median.toFixed(0), r.proxyCpuUsPerQuery?.median.toFixed(1) ?? '-', String(r.lost)])
    }
    console.log(formatTable(rows))
    console.log(`\nqueries/s: dnsperf, 8 clients, 100 in flight, ${SETTINGS.throughputSeconds} s; latency: ${SETTINGS.latencyQps} queries/s for ${SETTINGS.latencySeconds} s; ${SETTINGS.rounds} round(s), medians of rounds`)
  } finally {
    await cleanup()
  }
}

await main()
