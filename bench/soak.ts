/**
 * The soak: one node proxy carrying steady traffic for `--duration` seconds
 * (default 3600) between a client and a server pod on one node — new
 * connections without pause, and every interval a burst of connections
 * held open and closed again — while its memory (RSS after a full GC) and
 * descriptors are sampled every `--interval` seconds (default 60). It
 * reports each sample and the drift per hour (least-squares slope over the
 * samples after the first, which includes warm-up): a proxy that leaks
 * shows a slope that does not go to zero as the run gets longer.
 *
 * Run as root: `npx tsx --tsconfig tsconfig.json bench/soak.ts [--duration S]
 * [--interval S] [--data-path node|native] [--quick] [--json]`.
 */
import { defaultHboneDataPath } from '@ambientkit/proxy'
import { stopAll } from './lib/processes'
import { createPodPair, footprint, report, slope, startNodeProxy } from './lib/scale'
import { formatTable } from './lib/table'
import { sweepStaleNamespaces } from './lib/topology'

const args = process.argv.slice(2)
const option = (name: string): string | undefined => args.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3) ?? (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : undefined)
const quick = args.includes('--quick')
const duration = Number(option('duration') ?? (quick ? 20 : 3600))
const interval = Number(option('interval') ?? (quick ? 4 : 60))
const dataPath = option('data-path') ?? defaultHboneDataPath()
const held = quick ? 100 : 1000
for (const [name, value] of [['duration', duration], ['interval', interval]] as const) {
  if (!Number.isFinite(value) || value <= 0) {
    process.stderr.write(`soak: --${name} must be a positive number of seconds, got ${JSON.stringify(option(name))}\n`)
    process.exit(2)
  }
}
if (dataPath !== 'node' && dataPath !== 'native') {
  process.stderr.write(`soak: --data-path must be node or native, not ${JSON.stringify(dataPath)}\n`)
  process.exit(2)
}
const log = (message: string): void => void process.stderr.write(`soak: ${message}\n`)

interface Sample {
  seconds: number
  rssKiB: number
  fds: number
  connections: number
  errors: number
}

async function main(): Promise<void> {
  sweepStaleNamespaces()
  const pair = await createPodPair()
  const samples: Sample[] = []
  try {
    process.env.BENCH_DATA_PATH = dataPath
    const proxy = await startNodeProxy(pair.workloads, pair.enroll)
    try {
      const started = performance.now()
      const elapsed = (): number => (performance.now() - started) / 1000
      let connections = 0
      let errors = 0
      const sample = async (): Promise<void> => {
        const { rssKiB, fds } = await footprint(proxy.runner)
        samples.push({ seconds: elapsed(), rssKiB, fds, connections, errors })
        log(`${elapsed().toFixed(0)} s: RSS ${(rssKiB / 1024).toFixed(1)} MiB, ${fds} fds, ${connections} connections, ${errors} errors`)
      }
      await sample()
      while (elapsed() < duration) {
        // One interval: a burst held open and closed, then new connections until the interval ends.
        const next = Math.min(duration, (samples.length) * interval)
        await pair.app.request({ op: 'open-idle', ...pair.target, count: held, parallel: 32 }, 600_000)
        await pair.app.request({ op: 'close-idle' }, 600_000)
        connections += held
        const ms = Math.max(0, (next - elapsed()) * 1000)
        const rate = await pair.app.request<{ connections: number; errors: number }>({ op: 'connrate', ...pair.target, size: 1024, concurrency: 8, durationMs: ms }, ms + 600_000)
        connections += rate.connections
        errors += rate.errors
        await sample()
      }
    } finally {
      await proxy.close()
    }
  } finally {
    await stopAll()
    await pair.network.cleanup()
  }
  // Drift over the samples after the first (which includes warm-up), per hour.
  const steady = samples.length > 2 ? samples.slice(1) : samples
  const hours = steady.map((s) => s.seconds / 3600)
  const drift = { rssMiBPerHour: slope(hours, steady.map((s) => s.rssKiB / 1024)), fdsPerHour: slope(hours, steady.map((s) => s.fds)) }
  const last = samples.at(-1)!
  const summary = { dataPath, durationSeconds: last.seconds, interval, connections: last.connections, errors: last.errors, drift, samples }
  const rows = [['elapsed (s)', 'RSS (MiB)', 'fds', 'connections', 'errors'], ...samples.map((s) => [s.seconds.toFixed(0), (s.rssKiB / 1024).toFixed(1), String(s.fds), String(s.connections), String(s.errors)])]
  const driftTable = formatTable([['drift', 'per hour'], ['RSS (MiB)', drift.rssMiBPerHour.toFixed(2)], ['descriptors', drift.fdsPerHour.toFixed(2)]])
  report(`\nSoak of one node proxy (${dataPath} data path, ${last.seconds.toFixed(0)} s):\n\n${formatTable(rows)}\n\n${driftTable}\n`, summary)
}

process.once('SIGINT', () => void stopAll().then(() => process.exit(130)))
main().catch((err: unknown) => {
  process.stderr.write(`soak: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
