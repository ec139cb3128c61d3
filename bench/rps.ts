/**
 * Proxy CPU and memory per 1,000 HTTP requests per second, the figure
 * ztunnel publishes (0.06 vCPU and 12 MB per 1,000 requests/s): an HTTP/1.1
 * client in one pod sends `POST /` with a 1 KiB body at a fixed rate (an
 * open loop, over `--connections` keep-alive connections, default 10) to an
 * HTTP/1.1 server in another pod that answers 1 KiB, on each path: direct,
 * stunnel mutual TLS, HAProxy relaying plain TCP, and the mesh with the
 * pods on one node and on two. Per path and rate it reports the proxies'
 * CPU seconds per thousand requests (= vCPU per 1,000 requests/s), all of
 * them and the busiest one, their RSS at rest (connections open, after a
 * full GC) and under load, the increase per 1,000 requests/s, the latency
 * (from when a request went out, and from when it was due), and requests
 * that failed or went out late; then the mesh's CPU, memory and latency
 * divided by HAProxy's. The baselines run across nodes, as the suite's
 * do. Every path gets fresh proxy processes, so no run inherits memory
 * another left.
 *
 * Run as root: `npx tsx --tsconfig tsconfig.json bench/rps.ts [--rates
 * 1000,5000] [--duration S] [--connections N] [--data-path node|native]
 * [--quick] [--json]`.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createCertificateAuthority } from '@ambientkit/identity'
import { defaultHboneDataPath, nativeHboneThreads } from '@ambientkit/proxy'
import { startHaproxyPair } from './lib/haproxy'
import { bundleNodeRunner, startBenchNode, startPodAgent } from './lib/mesh'
import { cpuSeconds, machineInfo, rssKiB, sampleRss, type MachineInfo } from './lib/proc'
import { stop, stopAll, type Agent, type RelayProcess, type RelayService } from './lib/processes'
import { report } from './lib/scale'
import { startStunnelPair } from './lib/stunnel'
import { formatTable } from './lib/table'
import { capturePods, createBenchTopology, sweepStaleNamespaces, type BenchTopology } from './lib/topology'

const args = process.argv.slice(2)
const option = (name: string): string | undefined => args.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3) ?? (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : undefined)
const quick = args.includes('--quick')
const rates = (option('rates') ?? (quick ? '1000' : '1000,5000')).split(',').map(Number)
const duration = Number(option('duration') ?? (quick ? 2 : 10))
const connections = Number(option('connections') ?? 10)
const dataPath = option('data-path') ?? defaultHboneDataPath()
const fail = (message: string): never => {
  process.stderr.write(`rps: ${message}\n`)
  process.exit(2)
}
if (rates.some((rate) => !Number.isInteger(rate) || rate < 1)) fail(`--rates must be positive whole numbers of requests per second separated by commas, got ${JSON.stringify(option('rates'))}`)
if (!Number.isFinite(duration) || duration <= 0) fail(`--duration must be a positive number of seconds, got ${JSON.stringify(option('duration'))}`)
if (!Number.isInteger(connections) || connections < 1) fail(`--connections must be a positive whole number, got ${JSON.stringify(option('connections'))}`)
if (dataPath !== 'node' && dataPath !== 'native') fail(`--data-path must be node or native, not ${JSON.stringify(dataPath)}`)
process.env.BENCH_DATA_PATH = dataPath
const log = (message: string): void => void process.stderr.write(`rps: ${message}\n`)

const SIZE = 1024
const HTTP_PORT = 8080
/** Warm-up at the run's rate before measuring: the mesh's tunnels, TLS sessions and buffers are set up then. */
const WARMUP_MS = quick ? 500 : 2000
const STUNNEL = { local: 17200, tunnel: 27200 }
const HAPROXY = { local: 17300, tunnel: 27300 }
/** ztunnel's published figures, per node proxy. */
const ZTUNNEL = { vcpuPer1k: 0.06, mbPer1k: 12 }

const PATHS = [
  { key: 'direct', label: 'direct (no proxy)' },
  { key: 'stunnel', label: 'stunnel (mutual TLS)' },
  { key: 'haproxy', label: 'HAProxy (plain TCP)' },
  { key: 'meshSameNode', label: 'mesh, same node' },
  { key: 'meshCrossNode', label: 'mesh, cross node' },
] as const
export type PathKey = (typeof PATHS)[number]['key']

/** A path's proxy processes while it is measured. */
interface Proxies {
  pids: number[]
  /** Node proxies, which can be asked for a full GC before memory is read. */
  runners: Agent[]
  stop(): Promise<void>
}

export interface Latency {
  p50: number
  p90: number
  p99: number
  max: number
}

interface Load {
  requests: number
  completed: number
  failed: number
  late: number
  perSecond: number
  latencyUs: Latency | null
  serviceUs: Latency | null
  generatorCores: number
}

export interface Run {
  path: PathKey
  rate: number
  requests: number
  failed: number
  late: number
  perSecond: number
  /** From when each request went out to its whole response. */
  serviceUs: Latency | null
  /** From when each request was due. */
  latencyUs: Latency | null
  generatorCores: number
  proxies: number
  /** Proxy CPU seconds per thousand requests, which is vCPU per 1,000 requests/s: all of the path's proxies, and the busiest one. */
  vcpuPer1k: number | null
  busiestVcpuPer1k: number | null
  /** Sum over the path's proxies. */
  rssIdleMiB: number | null
  rssLoadMiB: number | null
  mibPer1k: number | null
}

/** The mesh's figures divided by HAProxy's at the same rate. */
export interface Ratio {
  path: PathKey
  rate: number
  vcpuPer1k: number | null
  busiestVcpuPer1k: number | null
  /** RSS under load, not its increase: HAProxy's barely moves (it allocates at start), so a ratio of increases would divide by noise. */
  rssLoad: number | null
  serviceP50: number | null
  serviceP99: number | null
}

/** What `--json` prints. */
export interface RpsResult {
  quick: boolean
  machine: MachineInfo
  settings: { rates: number[]; durationSeconds: number; warmupSeconds: number; connections: number; size: number; dataPath: string; hboneThreads?: number }
  ztunnel: typeof ZTUNNEL
  runs: Run[]
  ratios: Ratio[]
}

async function measure(path: PathKey, client: Agent, target: { host: string; port: number }, start: () => Promise<Proxies>, rate: number): Promise<Run> {
  const proxies = await start()
  try {
    await client.request({ op: 'http-open', ...target, connections })
    const { pids, runners } = proxies
    await Promise.all(runners.map((runner) => runner.request({ op: 'gc' })))
    const idle = pids.map(rssKiB)
    await client.request({ op: 'http-load', rate, durationMs: WARMUP_MS, size: SIZE }, WARMUP_MS + 30_000)
    const cpuBefore = pids.map(cpuSeconds)
    const sampler = sampleRss(pids)
    const load = await client.request<Load>({ op: 'http-load', rate, durationMs: duration * 1000, size: SIZE }, duration * 1000 + 30_000)
    const peaks = sampler.stop()
    const cpu = pids.map((pid, i) => cpuSeconds(pid) - cpuBefore[i]!)
    if (load.failed > 0 || load.late > 0) log(`${path} at ${rate}/s: ${load.failed} failed, ${load.late} late of ${load.requests}`)
    const thousands = load.completed / 1000
    const sum = (values: number[]): number => values.reduce((a, b) => a + b, 0)
    const withProxies = pids.length > 0 && thousands > 0
    return {
      path,
      rate,
      requests: load.requests,
      failed: load.failed,
      late: load.late,
      perSecond: load.perSecond,
      serviceUs: load.serviceUs,
      latencyUs: load.latencyUs,
      generatorCores: load.generatorCores,
      proxies: pids.length,
      vcpuPer1k: withProxies ? sum(cpu) / thousands : null,
      busiestVcpuPer1k: withProxies ? Math.max(...cpu) / thousands : null,
      rssIdleMiB: withProxies ? sum(idle) / 1024 : null,
      rssLoadMiB: withProxies ? sum(peaks) / 1024 : null,
      mibPer1k: withProxies ? (sum(peaks) - sum(idle)) / 1024 / (rate / 1000) : null,
    }
  } finally {
    await client.request({ op: 'http-close' })
    await proxies.stop()
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the bench creates network namespaces: run it as root')
  const machine = machineInfo()
  sweepStaleNamespaces()
  const dir = mkdtempSync(join(tmpdir(), 'akb-'))
  let topology: BenchTopology | undefined
  const agents: Agent[] = []
  const runs: Run[] = []
  try {
    await bundleNodeRunner()
    log('building namespaces')
    topology = await createBenchTopology()
    const t = topology
    await capturePods([t.meshClient, t.meshServerSame, t.meshServerCross])
    const plainClient = await startPodAgent(t.plainClient.name, false)
    const meshClient = await startPodAgent(t.meshClient.name, false)
    agents.push(plainClient, meshClient)
    for (const pod of [t.plainServer, t.meshServerSame, t.meshServerCross]) {
      const server = await startPodAgent(pod.name, false)
      agents.push(server)
      await server.request({ op: 'serve-http', port: HTTP_PORT, size: SIZE })
    }
    const ca = await createCertificateAuthority({ trustDomain: 'cluster.local', keyType: 'ecdsa-p256' })
    const caPem = ca.save()

    const relays = async (pair: Promise<{ client: RelayProcess; server: RelayProcess }>): Promise<Proxies> => {
      const { client, server } = await pair
      return { pids: [client.pid, server.pid], runners: [], stop: async () => void (await Promise.all([stop(client.child), stop(server.child)])) }
    }
    const plain = { dir, clientNs: t.plainClient.name, serverNs: t.plainServer.name, serverIp: t.plainServer.ipv4 }
    const service = (ports: { local: number; tunnel: number }): RelayService[] => [{ name: 'http', ...ports, target: HTTP_PORT }]
    const nodeProxies = async (cross: boolean): Promise<Proxies> => {
      const runners = [await startBenchNode(dir, t, caPem, 'node-1')]
      if (cross) runners.push(await startBenchNode(dir, t, caPem, 'node-2'))
      return { pids: runners.map((r) => r.pid), runners, stop: async () => void (await Promise.all(runners.map((r) => r.close()))) }
    }
    const paths: Record<PathKey, { client: Agent; target: { host: string; port: number }; start: () => Promise<Proxies> }> = {
      direct: { client: plainClient, target: { host: t.plainServer.ipv4, port: HTTP_PORT }, start: async () => ({ pids: [], runners: [], stop: async () => {} }) },
      stunnel: { client: plainClient, target: { host: '127.0.0.1', port: STUNNEL.local }, start: () => relays(startStunnelPair({ ca, ...plain, services: service(STUNNEL) })) },
      haproxy: { client: plainClient, target: { host: '127.0.0.1', port: HAPROXY.local }, start: () => relays(startHaproxyPair({ ...plain, services: service(HAPROXY) })) },
      meshSameNode: { client: meshClient, target: { host: t.meshServerSame.ipv4, port: HTTP_PORT }, start: () => nodeProxies(false) },
      meshCrossNode: { client: meshClient, target: { host: t.meshServerCross.ipv4, port: HTTP_PORT }, start: () => nodeProxies(true) },
    }
    for (const rate of rates) {
      for (const { key } of PATHS) {
        log(`${key} at ${rate} requests/s for ${duration} s`)
        runs.push(await measure(key, paths[key].client, paths[key].target, paths[key].start, rate))
      }
    }
  } finally {
    await Promise.allSettled(agents.map((agent) => agent.close()))
    await stopAll()
    await topology?.network.cleanup()
    rmSync(dir, { recursive: true, force: true })
  }

  const ratios = runs
    .filter((r) => r.path === 'meshSameNode' || r.path === 'meshCrossNode')
    .map((mesh): Ratio => {
      const haproxy = runs.find((r) => r.path === 'haproxy' && r.rate === mesh.rate)!
      const ratio = (a: number | null | undefined, b: number | null | undefined): number | null => (a == null || b == null || b <= 0 ? null : a / b)
      return {
        path: mesh.path,
        rate: mesh.rate,
        vcpuPer1k: ratio(mesh.vcpuPer1k, haproxy.vcpuPer1k),
        busiestVcpuPer1k: ratio(mesh.busiestVcpuPer1k, haproxy.busiestVcpuPer1k),
        rssLoad: ratio(mesh.rssLoadMiB, haproxy.rssLoadMiB),
        serviceP50: ratio(mesh.serviceUs?.p50, haproxy.serviceUs?.p50),
        serviceP99: ratio(mesh.serviceUs?.p99, haproxy.serviceUs?.p99),
      }
    })
  const label = (key: PathKey): string => PATHS.find((p) => p.key === key)!.label
  const num = (value: number | null | undefined, digits: number): string => (value == null ? '–' : value.toFixed(digits))
  const ms = (l: Latency | null, q: 'p50' | 'p99'): string => num(l === null ? null : l[q] / 1000, 2)
  const rows = [
    ['path', 'rate (req/s)', 'achieved (req/s)', 'failed', 'late', 'p50 / p99 (ms)', 'p99 from due (ms)', 'proxies', 'vCPU per 1k req/s', 'busiest proxy', 'RSS at rest (MiB)', 'RSS under load (MiB)', 'MiB per 1k req/s', 'generator (cores)'],
    ...runs.map((r) => [
      label(r.path),
      String(r.rate),
      r.perSecond.toFixed(0),
      String(r.failed),
      String(r.late),
      `${ms(r.serviceUs, 'p50')} / ${ms(r.serviceUs, 'p99')}`,
      ms(r.latencyUs, 'p99'),
      String(r.proxies),
      num(r.vcpuPer1k, 3),
      num(r.busiestVcpuPer1k, 3),
      num(r.rssIdleMiB, 1),
      num(r.rssLoadMiB, 1),
      num(r.mibPer1k, 2),
      r.generatorCores.toFixed(2),
    ]),
  ]
  const ratioRows = [
    ['mesh ÷ HAProxy', 'rate (req/s)', 'vCPU per 1k req/s', 'busiest proxy', 'RSS under load', 'p50', 'p99'],
    ...ratios.map((r) => [label(r.path), String(r.rate), num(r.vcpuPer1k, 2), num(r.busiestVcpuPer1k, 2), num(r.rssLoad, 2), num(r.serviceP50, 2), num(r.serviceP99, 2)]),
  ]
  const title = `\nProxy CPU and memory per 1,000 HTTP/1.1 requests per second (1 KiB request and response, ${connections} keep-alive connections, fixed rate, ${duration} s per run; mesh on the ${dataPath} data path; load average ${machine.loadAverage} on ${machine.cores} cores when it started):\n\n`
  const footer = `\n\nztunnel publishes ${ZTUNNEL.vcpuPer1k} vCPU and ${ZTUNNEL.mbPer1k} MB per 1,000 requests/s per node proxy (compare "busiest proxy" and "MiB per 1k req/s").\n`
  const settings = { rates, durationSeconds: duration, warmupSeconds: WARMUP_MS / 1000, connections, size: SIZE, dataPath, ...(dataPath === 'native' ? { hboneThreads: nativeHboneThreads() ?? 0 } : {}) }
  const result: RpsResult = { quick, machine, settings, ztunnel: ZTUNNEL, runs, ratios }
  report(`${title}${formatTable(rows)}\n\n${formatTable(ratioRows)}${footer}`, result)
}

process.once('SIGINT', () => void stopAll().then(() => process.exit(130)))
main().catch((err: unknown) => {
  process.stderr.write(`rps: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
