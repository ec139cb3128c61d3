import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls'
import type { ChildProcess } from 'node:child_process'
import type { AddressInfo } from 'node:net'
import {
  attachTlsServer,
  createCertificateAuthority,
  createIdentityManager,
  createLocalCaSource,
  tlsClientOptions,
  tlsServerOptions,
  type CertificateAuthority,
} from '@ambientkit/identity'
import { defaultHboneDataPath, nativeHboneThreads } from '@ambientkit/proxy'
import { applyCapture, openNetns, removeCapture } from '@ambientkit/redirect'
import { anonKiB, cpuSeconds, machineInfo, rssKiB, runQueueWaits, sampleRss } from './lib/proc'
import { bundleNodeRunner, ECHO_PORT, IPERF_PORT, startBenchNode, startIperfServer, startPodAgent } from './lib/mesh'
import { runIn, stop, stopAll, tsArgs, type Agent, type RelayService } from './lib/processes'
import { MESH_SCENARIOS, SCENARIOS, type BenchResult, type ExtraResult, type ScenarioKey, type ScenarioResult } from './lib/results'
import { judgeTargets, printReport } from './lib/report'
import { summarize, type Summary } from './lib/stats'
import { startStunnelPair } from './lib/stunnel'
import { startHaproxyPair } from './lib/haproxy'
import { capturePods, createBenchTopology, sweepStaleNamespaces, type BenchTopology } from './lib/topology'
import { writeDocs } from './lib/docs'

/**
 * `npm run bench`: builds two nodes and their pods as network namespaces,
 * then measures, side by side and interleaved round by round, plain TCP,
 * stunnel mutual TLS, HAProxy relaying plain TCP (what any pair of proxies
 * adds here) and ambientkit's HBONE mesh (pods on one node and on two
 * nodes). Flags: `--quick` (a short smoke run), `--json` (the full result as
 * JSON on stdout), `--docs` (rewrite docs/performance.md's results
 * and docs/performance-chart.svg), `--skip-extras` (do not run the other
 * bench files), `--same-node-fast-path` (the node proxies splice same-node
 * connections in-process instead of HBONE: the "same node" column then
 * measures that path), `--data-path=node|native` (the workload proxies'
 * data path; default: theirs).
 */

const argv = process.argv.slice(2)
const quick = argv.includes('--quick')
const json = argv.includes('--json')
const docs = argv.includes('--docs')
const skipExtras = argv.includes('--skip-extras')
const sameNodeFastPath = argv.includes('--same-node-fast-path')
// The node-runner processes inherit it.
if (sameNodeFastPath) process.env.BENCH_SAME_NODE_FAST_PATH = '1'
const dataPathArg = argv.find((arg) => arg.startsWith('--data-path='))?.slice('--data-path='.length)
if (dataPathArg !== undefined && dataPathArg !== 'node' && dataPathArg !== 'native') {
  process.stderr.write(`bench: --data-path must be node or native, not ${JSON.stringify(dataPathArg)}\n`)
  process.exit(2)
}
// What the proxies run unless told: the workload proxy's own default. The node
// runners are told explicitly, so the settings name what ran (or the run fails).
const dataPath = dataPathArg ?? defaultHboneDataPath()
process.env.BENCH_DATA_PATH = dataPath

const SETTINGS = quick
  ? { rounds: 1, latencyRounds: 1, iperfSeconds: 1, pingWarmup: 200, pingCount: 1000, connMs: 500, connConcurrency: 8, idleConnections: 100, idleRounds: 1, captureRounds: 3, handshakeMs: 300, sameNodeFastPath, dataPath }
  : { rounds: 3, latencyRounds: 5, iperfSeconds: 3, pingWarmup: 1000, pingCount: 10_000, connMs: 2000, connConcurrency: 8, idleConnections: 1000, idleRounds: 2, captureRounds: 15, handshakeMs: 1500, sameNodeFastPath, dataPath }

const STUNNEL = { echo: { local: 17000, tunnel: 27000 }, iperf: { local: 15201, tunnel: 25201 } }
const HAPROXY = { echo: { local: 17100, tunnel: 27100 }, iperf: { local: 15301, tunnel: 25301 } }

const log = (message: string): void => {
  process.stderr.write(`bench: ${message}\n`)
}

interface Scenario {
  key: ScenarioKey
  client: Agent
  clientNs: string
  host: string
  echoPort: number
  iperfPort: number
  /** Proxy processes on the client side and on the server side (the same process for one node), as of now: proxies are restarted. */
  clientProxies: () => number[]
  serverProxies: () => number[]
}

/** The running proxies: pids, and the handles to stop them. */
interface ProxySet {
  stunnelClient: number
  stunnelServer: number
  haproxyClient: number
  haproxyServer: number
  node1: number
  node2: number
  runners: Agent[]
  /** stunnel's and HAProxy's processes. */
  relays: ChildProcess[]
}

interface Samples {
  tput1: number[]
  tput8: number[]
  p50: number[]
  p90: number[]
  p99: number[]
  conn: number[]
  cpuClient: number[]
  cpuServer: number[]
  cpuTotal: number[]
  cores: number[]
  cpuPerConn: number[]
  cpuPerRtt: number[]
  waiting: number[]
  rssLoad: number[]
  rssIdleConns: number[]
  kibPerConn: number[]
  rssIdle: number[]
}

const unique = (pids: readonly number[]): number[] => [...new Set(pids)]
const proxiesOf = (s: Scenario): number[] => unique([...s.clientProxies(), ...s.serverProxies()])
const sum = (values: readonly number[]): number => values.reduce((a, b) => a + b, 0)
const sumCpu = (pids: readonly number[]): number => sum(pids.map(cpuSeconds))
const sumRss = (pids: readonly number[]): number => sum(pids.map(rssKiB))

interface Iperf {
  end: { sum_received: { bytes: number; bits_per_second: number; seconds: number } }
}

async function iperf(s: Scenario, streams: number): Promise<{ gbps: number; bytes: number }> {
  const out = await runIn(
    s.clientNs,
    'iperf3',
    ['-c', s.host, '-p', String(s.iperfPort), '-t', String(SETTINGS.iperfSeconds), '-P', String(streams), '-J', '--connect-timeout', '5000'],
    (SETTINGS.iperfSeconds + 30) * 1000,
  )
  const result = JSON.parse(out) as Iperf
  return { gbps: result.end.sum_received.bits_per_second / 1e9, bytes: result.end.sum_received.bytes }
}

async function gc(runners: readonly Agent[]): Promise<void> {
  await Promise.all(runners.map((runner) => runner.request({ op: 'gc' })))
}

async function measureThroughput(s: Scenario, samples: Samples): Promise<void> {
  const proxies = proxiesOf(s)
  const [clientSide, serverSide] = [s.clientProxies(), s.serverProxies()]
  const disjoint = clientSide.every((pid) => !serverSide.includes(pid))
  const waits = (): Map<string, number> => new Map(proxies.flatMap((pid) => [...runQueueWaits(pid)]))
  const before = { client: sumCpu(clientSide), server: sumCpu(serverSide), total: sumCpu(proxies), waits: waits(), at: performance.now() }
  const single = await iperf(s, 1)
  if (proxies.length > 0) {
    const gb = single.bytes / 1e9
    const total = sumCpu(proxies) - before.total
    const wall = (performance.now() - before.at) / 1000
    samples.cpuTotal.push(total / gb)
    samples.cores.push(total / wall)
    const after = waits()
    // The busiest thread of any proxy (a thread that started during the run counts from 0).
    samples.waiting.push(Math.max(0, ...[...after].map(([thread, w]) => (w - (before.waits.get(thread) ?? 0)) / wall)))
    if (disjoint) {
      samples.cpuClient.push((sumCpu(clientSide) - before.client) / gb)
      samples.cpuServer.push((sumCpu(serverSide) - before.server) / gb)
    }
  }
  samples.tput1.push(single.gbps)
  const sampler = proxies.length > 0 ? sampleRss(proxies) : undefined
  const eight = await iperf(s, 8)
  if (sampler !== undefined) samples.rssLoad.push(sum(sampler.stop()))
  samples.tput8.push(eight.gbps)
}

async function measureLatency(s: Scenario, samples: Samples): Promise<void> {
  const proxies = proxiesOf(s)
  const before = sumCpu(proxies)
  const result = await s.client.request<{ p50: number; p90: number; p99: number }>({
    op: 'pingpong',
    host: s.host,
    port: s.echoPort,
    size: 64,
    warmup: SETTINGS.pingWarmup,
    count: SETTINGS.pingCount,
  })
  samples.p50.push(result.p50)
  samples.p90.push(result.p90)
  samples.p99.push(result.p99)
  if (proxies.length > 0) samples.cpuPerRtt.push(((sumCpu(proxies) - before) * 1e6) / (SETTINGS.pingWarmup + SETTINGS.pingCount))
}

async function measureConnections(s: Scenario, samples: Samples): Promise<void> {
  const proxies = proxiesOf(s)
  const before = sumCpu(proxies)
  const result = await s.client.request<{ connections: number; perSecond: number; errors: number; firstError?: string }>({
    op: 'connrate',
    host: s.host,
    port: s.echoPort,
    size: 64,
    concurrency: SETTINGS.connConcurrency,
    durationMs: SETTINGS.connMs,
  })
  if (result.errors > 0) log(`${s.key}: ${result.errors} connection errors (first: ${result.firstError})`)
  samples.conn.push(result.perSecond)
  if (proxies.length > 0 && result.connections > 0) samples.cpuPerConn.push(((sumCpu(proxies) - before) * 1000) / result.connections)
}

async function measureIdle(s: Scenario, samples: Samples, runners: readonly Agent[]): Promise<void> {
  const proxies = proxiesOf(s)
  await gc(runners)
  const before = sumRss(proxies)
  const anonBefore = sum(proxies.map(anonKiB))
  samples.rssIdle.push(before)
  await s.client.request({ op: 'open-idle', host: s.host, port: s.echoPort, count: SETTINGS.idleConnections, parallel: 32 })
  await gc(runners)
  samples.rssIdleConns.push(sumRss(proxies))
  // Anonymous memory: code pages of the proxy's binary first run meanwhile are not the connections' state.
  samples.kibPerConn.push((sum(proxies.map(anonKiB)) - anonBefore) / SETTINGS.idleConnections)
  await s.client.request({ op: 'close-idle' })
}

/**
 * Apply then remove capture, `rounds` times with one backend, each time in a
 * fresh pod as the issue defines it. (Re-applying right after a removal in
 * the same namespace is slower: the kernel finishes the removal's cleanup,
 * an RCU grace period, before it takes that namespace's next transaction.)
 */
async function measureCapture(t: BenchTopology, backend: 'nftables' | 'iptables'): Promise<{ applyMs: Summary; removeMs: Summary } | { error: string }> {
  const apply: number[] = []
  const remove: number[] = []
  try {
    for (let i = 0; i < SETTINGS.captureRounds; i++) {
      const netns = openNetns((await t.network.addPod(t.nodes[0])).path)
      try {
        const t0 = performance.now()
        await applyCapture(netns, {}, { backend })
        const t1 = performance.now()
        await removeCapture(netns)
        apply.push(t1 - t0)
        remove.push(performance.now() - t1)
      } finally {
        await netns.close()
      }
    }
    return { applyMs: summarize(apply), removeMs: summarize(remove) }
  } catch (err) {
    return { error: (err as Error).message }
  }
}

/** Full mutual-TLS 1.3 handshakes with SVIDs, one after the other, both ends in this process (loopback). */
async function measureHandshakes(ca: CertificateAuthority): Promise<Summary> {
  const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
  const serverId = `spiffe://${ca.trustDomain.name}/ns/bench/sa/server`
  const clientId = `spiffe://${ca.trustDomain.name}/ns/bench/sa/client`
  const serverOptions = await tlsServerOptions({ manager, id: serverId })
  const server = createTlsServer(serverOptions, (socket) => socket.end())
  const binding = attachTlsServer(server, serverOptions)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  const rates: number[] = []
  try {
    for (let round = 0; round < Math.max(3, SETTINGS.rounds); round++) {
      const started = performance.now()
      let count = 0
      while (performance.now() - started < SETTINGS.handshakeMs) {
        const options = await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId] })
        await new Promise<void>((resolve, reject) => {
          const socket = tlsConnect({ ...options, host: '127.0.0.1', port }, () => {
            socket.destroy()
            resolve()
          })
          socket.once('error', reject)
        })
        count += 1
      }
      rates.push(count / ((performance.now() - started) / 1000))
    }
  } finally {
    binding.close()
    await new Promise((resolve) => server.close(resolve))
    await manager.close()
  }
  return summarize(rates)
}

/** Runs another bench file (owned by another package's author) and keeps what it printed. */
async function runExtra(file: string): Promise<ExtraResult> {
  const path = join('bench', file)
  if (!existsSync(path)) return { file, ok: false, error: 'not present' }
  const flags = [...(json ? ['--json'] : []), ...(quick ? ['--quick'] : [])]
  try {
    const out = await runIn(undefined, process.execPath, [...tsArgs(path), ...flags], quick ? 90_000 : 300_000)
    if (json) {
      try {
        return { file, ok: true, json: JSON.parse(out) }
      } catch {
        return { file, ok: true, text: out.trim() }
      }
    }
    return { file, ok: true, text: out.trim() }
  } catch (err) {
    return { file, ok: false, error: (err as Error).message.slice(0, 2000) }
  }
}

const emptySamples = (): Samples => ({
  tput1: [],
  tput8: [],
  p50: [],
  p90: [],
  p99: [],
  conn: [],
  cpuClient: [],
  cpuServer: [],
  cpuTotal: [],
  cores: [],
  cpuPerConn: [],
  cpuPerRtt: [],
  waiting: [],
  rssLoad: [],
  rssIdleConns: [],
  kibPerConn: [],
  rssIdle: [],
})

function resultOf(label: string, samples: Samples, hasProxies: boolean): ScenarioResult {
  const maybe = (values: number[]): Summary | null => (values.length > 0 ? summarize(values) : null)
  return {
    label,
    throughput1Gbps: summarize(samples.tput1),
    throughput8Gbps: summarize(samples.tput8),
    latencyUs: { p50: summarize(samples.p50), p90: summarize(samples.p90), p99: summarize(samples.p99) },
    connectionsPerSecond: summarize(samples.conn),
    cpuSecondsPerGB: hasProxies ? { client: maybe(samples.cpuClient), server: maybe(samples.cpuServer), total: summarize(samples.cpuTotal) } : null,
    proxyCores: hasProxies ? summarize(samples.cores) : null,
    proxyRunQueueWait: hasProxies ? summarize(samples.waiting) : null,
    cpuMsPerConnection: hasProxies ? summarize(samples.cpuPerConn) : null,
    cpuUsPerRoundTrip: hasProxies ? summarize(samples.cpuPerRtt) : null,
    rssKiB: hasProxies ? { idle: summarize(samples.rssIdle), withIdleConnections: summarize(samples.rssIdleConns), underLoad: summarize(samples.rssLoad) } : null,
    kibPerIdleConnection: hasProxies ? summarize(samples.kibPerConn) : null,
  }
}

function ratios(scenarios: Record<ScenarioKey, ScenarioResult>): BenchResult['ratios'] {
  const figures: Record<string, (r: ScenarioResult) => number> = {
    throughput1: (r) => r.throughput1Gbps.median,
    throughput8: (r) => r.throughput8Gbps.median,
    latencyP50: (r) => r.latencyUs.p50.median,
    latencyP99: (r) => r.latencyUs.p99.median,
    connectionsPerSecond: (r) => r.connectionsPerSecond.median,
  }
  const out: BenchResult['ratios'] = {}
  for (const key of MESH_SCENARIOS) {
    out[key] = {}
    for (const [name, pick] of Object.entries(figures)) {
      const ratio = (base: ScenarioResult): number | null => (pick(base) > 0 ? pick(scenarios[key]) / pick(base) : null)
      out[key][name] = { vsDirect: ratio(scenarios.direct), vsStunnel: ratio(scenarios.stunnel) }
    }
  }
  return out
}

async function main(): Promise<void> {
  const startedAt = new Date()
  const machine = machineInfo()
  if (process.getuid?.() !== 0) throw new Error('the bench creates network namespaces: run it as root')
  const stale = sweepStaleNamespaces()
  if (stale.length > 0) log(`removed ${stale.length} namespaces left by an earlier run`)

  const dir = mkdtempSync(join(tmpdir(), 'akb-'))
  let topology: BenchTopology | undefined
  const agents: Agent[] = []
  let cleaning: Promise<void> | undefined
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      await Promise.allSettled(agents.map((agent) => agent.close()))
      await stopAll()
      await topology?.network.cleanup()
      rmSync(dir, { recursive: true, force: true })
    })())
  const interrupted = (signal: NodeJS.Signals): void => {
    log(`${signal}: cleaning up`)
    void cleanup().finally(() => process.exit(130))
  }
  process.once('SIGINT', interrupted)
  process.once('SIGTERM', interrupted)

  try {
    await bundleNodeRunner()
    log('building namespaces')
    topology = await createBenchTopology()
    const t = topology
    const ca = await createCertificateAuthority({ trustDomain: 'cluster.local', keyType: 'ecdsa-p256' })

    log('measuring capture apply/remove')
    const capture = {
      nftables: await measureCapture(t, 'nftables'),
      iptables: await measureCapture(t, 'iptables'),
    }

    log('starting apps, iperf3 servers, stunnel, HAProxy and the node proxies')
    const plainClient = await startPodAgent(t.plainClient.name, false)
    const meshClient = await startPodAgent(t.meshClient.name, false)
    agents.push(plainClient, meshClient)
    for (const pod of [t.plainServer, t.meshServerSame, t.meshServerCross]) {
      agents.push(await startPodAgent(pod.name, true))
      await startIperfServer(pod.name)
    }
    await capturePods([t.meshClient, t.meshServerSame, t.meshServerCross])
    const caPem = ca.save()

    // The proxies: started again before each idle-memory measurement, because
    // memory a process once used is not given back (V8 and glibc keep it),
    // so only a fresh process shows what connections cost.
    let proxies: ProxySet | undefined
    const startProxies = async (): Promise<ProxySet> => {
      const services = (ports: typeof STUNNEL): RelayService[] => [
        { name: 'echo', local: ports.echo.local, tunnel: ports.echo.tunnel, target: ECHO_PORT },
        { name: 'iperf', local: ports.iperf.local, tunnel: ports.iperf.tunnel, target: IPERF_PORT },
      ]
      const stunnel = await startStunnelPair({
        ca,
        dir,
        clientNs: t.plainClient.name,
        serverNs: t.plainServer.name,
        serverIp: t.plainServer.ipv4,
        services: services(STUNNEL),
      })
      const haproxy = await startHaproxyPair({ dir, clientNs: t.plainClient.name, serverNs: t.plainServer.name, serverIp: t.plainServer.ipv4, services: services(HAPROXY) })
      const node1 = await startBenchNode(dir, t, caPem, 'node-1')
      const node2 = await startBenchNode(dir, t, caPem, 'node-2')
      agents.push(node1, node2)
      return {
        stunnelClient: stunnel.client.pid,
        stunnelServer: stunnel.server.pid,
        haproxyClient: haproxy.client.pid,
        haproxyServer: haproxy.server.pid,
        node1: node1.pid,
        node2: node2.pid,
        runners: [node1, node2],
        relays: [stunnel.client.child, stunnel.server.child, haproxy.client.child, haproxy.server.child],
      }
    }
    const restartProxies = async (): Promise<ProxySet> => {
      if (proxies !== undefined) {
        await Promise.all(proxies.runners.map((runner) => runner.close()))
        await Promise.all(proxies.relays.map((child) => stop(child)))
      }
      proxies = await startProxies()
      return proxies
    }
    const pids = (...names: Array<'stunnelClient' | 'stunnelServer' | 'haproxyClient' | 'haproxyServer' | 'node1' | 'node2'>) => (): number[] => names.map((name) => proxies![name])

    const scenarios: Scenario[] = [
      { key: 'direct', client: plainClient, clientNs: t.plainClient.name, host: t.plainServer.ipv4, echoPort: ECHO_PORT, iperfPort: IPERF_PORT, clientProxies: () => [], serverProxies: () => [] },
      {
        key: 'stunnel',
        client: plainClient,
        clientNs: t.plainClient.name,
        host: '127.0.0.1',
        echoPort: STUNNEL.echo.local,
        iperfPort: STUNNEL.iperf.local,
        clientProxies: pids('stunnelClient'),
        serverProxies: pids('stunnelServer'),
      },
      {
        key: 'haproxy',
        client: plainClient,
        clientNs: t.plainClient.name,
        host: '127.0.0.1',
        echoPort: HAPROXY.echo.local,
        iperfPort: HAPROXY.iperf.local,
        clientProxies: pids('haproxyClient'),
        serverProxies: pids('haproxyServer'),
      },
      {
        key: 'meshSameNode',
        client: meshClient,
        clientNs: t.meshClient.name,
        host: t.meshServerSame.ipv4,
        echoPort: ECHO_PORT,
        iperfPort: IPERF_PORT,
        clientProxies: pids('node1'),
        serverProxies: pids('node1'),
      },
      {
        key: 'meshCrossNode',
        client: meshClient,
        clientNs: t.meshClient.name,
        host: t.meshServerCross.ipv4,
        echoPort: ECHO_PORT,
        iperfPort: IPERF_PORT,
        clientProxies: pids('node1'),
        serverProxies: pids('node2'),
      },
    ]
    const samples = Object.fromEntries(scenarios.map((s) => [s.key, emptySamples()])) as Record<ScenarioKey, Samples>

    // Every measurement goes round the scenarios in turn, so a noisy
    // neighbour on a shared machine spreads over all of them alike.
    const withProxies = scenarios.filter((s) => s.key !== 'direct')
    for (let round = 0; round < SETTINGS.idleRounds; round++) {
      log(`idle connections, round ${round + 1}/${SETTINGS.idleRounds}`)
      for (const s of withProxies) {
        const fresh = await restartProxies()
        await measureIdle(s, samples[s.key], fresh.runners)
      }
    }
    await restartProxies()
    for (let round = 0; round < SETTINGS.latencyRounds; round++) {
      log(`latency, round ${round + 1}/${SETTINGS.latencyRounds}`)
      for (const s of scenarios) await measureLatency(s, samples[s.key])
    }
    for (let round = 0; round < SETTINGS.rounds; round++) {
      log(`connection rate, round ${round + 1}/${SETTINGS.rounds}`)
      for (const s of scenarios) await measureConnections(s, samples[s.key])
    }
    for (let round = 0; round < SETTINGS.rounds; round++) {
      log(`throughput, round ${round + 1}/${SETTINGS.rounds}`)
      for (const s of scenarios) await measureThroughput(s, samples[s.key])
    }

    // What the node proxies carried since their last restart (latency, connection rate, throughput).
    const connectionsByProtocol = Object.fromEntries(
      await Promise.all(
        (['node-1', 'node-2'] as const).map(async (node, i) => [node, (await proxies!.runners[i]!.request<{ protocols: Record<string, number> }>({ op: 'protocols' })).protocols] as const),
      ),
    )

    log('measuring identity handshakes')
    const handshakesPerSecond = await measureHandshakes(ca)
    await cleanup()

    const extras: ExtraResult[] = []
    if (!skipExtras) {
      for (const file of ['identity.ts', 'capture.ts', 'hbone.ts', 'dns.ts', 'istio.ts', 'rps.ts']) {
        log(`running bench/${file}`)
        extras.push(await runExtra(file))
      }
    }

    const results = Object.fromEntries(
      SCENARIOS.map(({ key, label }) => [key, resultOf(label, samples[key], proxiesOf(scenarios.find((s) => s.key === key)!).length > 0)]),
    ) as Record<ScenarioKey, ScenarioResult>
    const result: BenchResult = {
      version: 1,
      startedAt: startedAt.toISOString(),
      durationSeconds: Math.round((Date.now() - startedAt.getTime()) / 1000),
      quick,
      machine,
      settings: { ...SETTINGS, ...(dataPath === 'native' ? { hboneThreads: nativeHboneThreads() ?? 0 } : {}) },
      scenarios: results,
      ratios: ratios(results),
      capture,
      connectionsByProtocol,
      handshakesPerSecond,
      targets: [],
      extras,
    }
    result.targets = judgeTargets(result)
    if (json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
    else process.stdout.write(`${printReport(result)}\n`)
    if (docs) {
      const written = writeDocs(result)
      log(`wrote ${written.join(', ')}`)
    }
  } finally {
    await cleanup()
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    log(`failed: ${(err as Error).stack ?? String(err)}`)
    process.exit(1)
  },
)
