/**
 * Many concurrent connections through one node proxy: a client pod opens
 * `--connections` connections (default 10,000) to a server pod on the same
 * node, all captured and carried over HBONE by the one node proxy process,
 * and holds them open. Per data path (the workload proxies' `node` and
 * `native` HBONE paths), it reports the proxy's memory per open connection
 * (RSS after a full GC, before and while they are open), its descriptors,
 * and how long a new connection takes (connect, a 64-byte exchange, close)
 * with none open and while they all are.
 *
 * Run as root: `npx tsx --tsconfig tsconfig.json bench/connections.ts
 * [--connections N] [--data-path node|native] [--quick] [--json]`.
 * The processes' RLIMIT_NOFILE is raised first (prlimit): the proxy holds
 * two descriptors per connection, the apps one each.
 */
import { defaultHboneDataPath } from '@ambientkit/proxy'
import { stopAll } from './lib/processes'
import { createPodPair, descriptors, footprint, raiseFileLimit, report, startNodeProxy } from './lib/scale'
import { formatTable } from './lib/table'
import { sweepStaleNamespaces } from './lib/topology'

const args = process.argv.slice(2)
const option = (name: string): string | undefined => args.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3) ?? (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : undefined)
const quick = args.includes('--quick')
const connections = Number(option('connections') ?? (quick ? 200 : 10_000))
const latencySamples = quick ? 50 : 500
const dataPathArg = option('data-path')
if (!Number.isInteger(connections) || connections < 1) {
  process.stderr.write(`connections: --connections must be a positive whole number, got ${JSON.stringify(option('connections'))}\n`)
  process.exit(2)
}
if (dataPathArg !== undefined && dataPathArg !== 'node' && dataPathArg !== 'native') {
  process.stderr.write(`connections: --data-path must be node or native, not ${JSON.stringify(dataPathArg)}\n`)
  process.exit(2)
}
// Both paths when the addon loads (the default is native then), else Node's alone.
const dataPaths = dataPathArg !== undefined ? [dataPathArg] : defaultHboneDataPath() === 'native' ? ['native', 'node'] : ['node']
const log = (message: string): void => void process.stderr.write(`connections: ${message}\n`)

interface Latency {
  p50: number
  p90: number
  p99: number
  max: number
}

interface PathResult {
  connections: number
  openSeconds: number
  rssKiB: { before: number; open: number; after: number }
  kibPerConnection: number
  fds: { before: number; open: number; after: number }
  fdsPerConnection: number
  clientFds: number
  latencyUs: { none: Latency; open: Latency }
}

async function main(): Promise<void> {
  sweepStaleNamespaces()
  // The proxy holds two descriptors per connection (the app's and the tunnel's peer), plus its own.
  const fileLimit = raiseFileLimit(Math.max(65_536, connections * 2 + 4096), log)
  if (connections * 2 + 1024 > fileLimit) throw new Error(`${connections} connections need about ${connections * 2 + 1024} descriptors in the proxy, over the hard limit of ${fileLimit}: ask for at most ${Math.floor((fileLimit - 1024) / 2)}, or run where RLIMIT_NOFILE can be raised (CAP_SYS_RESOURCE)`)
  const pair = await createPodPair()
  const { app, workloads, enroll, target } = pair
  const results: Record<string, PathResult> = {}
  try {
    for (const dataPath of dataPaths) {
      process.env.BENCH_DATA_PATH = dataPath
      const proxy = await startNodeProxy(workloads, enroll)
      try {
        log(`${dataPath}: warming up`)
        await app.request({ op: 'connlatency', ...target, count: 20 })
        const before = await footprint(proxy.runner)
        const none = await app.request<Latency>({ op: 'connlatency', ...target, count: latencySamples })
        log(`${dataPath}: opening ${connections} connections`)
        const started = performance.now()
        await app.request({ op: 'open-idle', ...target, count: connections, parallel: 64 }, 600_000)
        const openSeconds = (performance.now() - started) / 1000
        const open = await footprint(proxy.runner)
        const clientFds = descriptors(app.pid).total
        const whileOpen = await app.request<Latency>({ op: 'connlatency', ...target, count: latencySamples })
        await app.request({ op: 'close-idle' }, 600_000)
        // The proxy sees each close a moment after the app: wait for its descriptors to come back down.
        let after = await footprint(proxy.runner)
        for (let i = 0; i < 100 && after.fds > before.fds; i++) {
          await new Promise((resolve) => setTimeout(resolve, 100))
          after = await footprint(proxy.runner)
        }
        results[dataPath] = {
          connections,
          openSeconds,
          rssKiB: { before: before.rssKiB, open: open.rssKiB, after: after.rssKiB },
          kibPerConnection: (open.rssKiB - before.rssKiB) / connections,
          fds: { before: before.fds, open: open.fds, after: after.fds },
          fdsPerConnection: (open.fds - before.fds) / connections,
          clientFds,
          latencyUs: { none: pick(none), open: pick(whileOpen) },
        }
      } finally {
        await proxy.close()
      }
    }
  } finally {
    await stopAll()
    await pair.network.cleanup()
  }
  const ms = (us: number): string => (us / 1000).toFixed(2)
  const rows = [['data path', 'connections', 'open (s)', 'RSS before (MiB)', 'RSS open (MiB)', 'KiB/conn', 'fds before', 'fds open', 'fds/conn', 'fds after', 'new conn p50/p99 (ms), none open', 'new conn p50/p99 (ms), all open']]
  for (const [path, r] of Object.entries(results)) {
    rows.push([
      path,
      String(r.connections),
      r.openSeconds.toFixed(1),
      (r.rssKiB.before / 1024).toFixed(1),
      (r.rssKiB.open / 1024).toFixed(1),
      r.kibPerConnection.toFixed(2),
      String(r.fds.before),
      String(r.fds.open),
      r.fdsPerConnection.toFixed(2),
      String(r.fds.after),
      `${ms(r.latencyUs.none.p50)} / ${ms(r.latencyUs.none.p99)}`,
      `${ms(r.latencyUs.open.p50)} / ${ms(r.latencyUs.open.p99)}`,
    ])
  }
  report(`\nConcurrent connections through one node proxy (client and server pods on one node, HBONE through the proxy):\n\n${formatTable(rows)}\n`, { connections, fileLimit, results })
}

function pick(l: Latency): Latency {
  return { p50: l.p50, p90: l.p90, p99: l.p99, max: l.max }
}

process.once('SIGINT', () => void stopAll().then(() => process.exit(130)))
main().catch((err: unknown) => {
  process.stderr.write(`connections: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
