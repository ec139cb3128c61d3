import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { build, type Plugin } from 'esbuild'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import type { Workload } from '@ambientkit/core'
import type { CertificateAuthorityPem } from '@ambientkit/identity'
import type { NodeRunnerConfig } from './node-runner'
import type { BenchTopology } from './topology'
import { spawnIn, startAgent, tsArgs, type Agent } from './processes'

/** Starting the bench's parts: the node proxy runners, the pod agents and the iperf3 servers. */

export const ECHO_PORT = 7000
export const IPERF_PORT = 5201

/** The mesh workload of a bench pod. */
export function workloadOf(pod: { name: string; ipv4: string; ipv6: string; node: { index: number } }, name: string): Workload {
  return {
    uid: `uid-${pod.name}`,
    name,
    namespace: 'bench',
    serviceAccount: name,
    node: `node-${pod.node.index}`,
    addresses: [pod.ipv4, pod.ipv6],
    protocol: 'HBONE',
    labels: { app: name },
  }
}

/** The bench topology's mesh workloads: the client and the same-node server (node 1), the cross-node server (node 2). */
export function benchWorkloads(t: BenchTopology): { client: Workload; same: Workload; cross: Workload } {
  return { client: workloadOf(t.meshClient, 'client'), same: workloadOf(t.meshServerSame, 'server-same'), cross: workloadOf(t.meshServerCross, 'server-cross') }
}

/** The node proxy of one node of the bench topology, knowing every mesh workload and enrolling that node's pods. */
export function startBenchNode(dir: string, t: BenchTopology, ca: CertificateAuthorityPem, node: 'node-1' | 'node-2'): Promise<Agent> {
  const w = benchWorkloads(t)
  const enroll =
    node === 'node-1'
      ? [
          { uid: w.client.uid, netnsPath: t.meshClient.path },
          { uid: w.same.uid, netnsPath: t.meshServerSame.path },
        ]
      : [{ uid: w.cross.uid, netnsPath: t.meshServerCross.path }]
  return startNodeRunner(dir, { nodeName: node, ca, workloads: Object.values(w), enroll })
}

// Under node_modules (ignored by git and eslint) so the bundle's external npm imports resolve from the repo's node_modules.
export const RUNNER_BUNDLE = 'node_modules/.cache/ambientkit-bench/node-runner.mjs'

/**
 * Bundles the node runner and the packages' sources into one plain JS file
 * (esbuild, the compiler tsup and tsx use): the proxy process then runs as a
 * built deployment would, without tsx's loader thread and transform caches
 * (≈35 MiB of RSS and some CPU that no user's proxy would carry). npm
 * dependencies stay external. The native addons are found relative to the
 * `import.meta.url` of the module that loads them, so each source file
 * keeps its own.
 */
export async function bundleNodeRunner(): Promise<void> {
  await build({
    entryPoints: ['bench/lib/node-runner.ts'],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node22',
    tsconfig: 'tsconfig.json',
    external: npmDependencies(),
    outfile: RUNNER_BUNDLE,
    logLevel: 'warning',
    plugins: [ownImportMetaUrl],
  })
}

/** The npm dependencies of every package (dns-packet, prom-client, netlink...): left to node_modules, as a published package would. */
function npmDependencies(): string[] {
  const manifests = readdirSync('packages').map((name) => JSON.parse(readFileSync(join('packages', name, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> })
  return [...new Set(manifests.flatMap((m) => Object.keys(m.dependencies ?? {})))].filter((name) => !name.startsWith('@ambientkit/'))
}

/** Replaces `import.meta.url` in the packages' sources with each file's own URL (esbuild would leave it empty in a bundle). */
const ownImportMetaUrl: Plugin = {
  name: 'own-import-meta-url',
  setup(builder) {
    builder.onLoad({ filter: /[/\\]packages[/\\][^/\\]+[/\\]src[/\\].*\.ts$/ }, (args) => ({
      contents: readFileSync(args.path, 'utf8').replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href)),
      loader: 'ts',
    }))
  },
}

/**
 * Starts one node's proxy process from `config` (written to `dir`) and waits
 * until its workloads are enrolled. Node flags: `--expose-gc`, plus
 * `--cpu-prof` into `$BENCH_PROXY_PROF` when set, plus `$BENCH_PROXY_NODE_FLAGS`.
 */
export async function startNodeRunner(dir: string, config: NodeRunnerConfig): Promise<Agent> {
  const file = join(dir, `${config.nodeName}.json`)
  writeFileSync(file, JSON.stringify(config), { mode: 0o600 })
  const flags = ['--expose-gc']
  if (process.env.BENCH_PROXY_PROF !== undefined) flags.push('--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROXY_PROF}`)
  // For tuning experiments on the proxy process alone, e.g. BENCH_PROXY_NODE_FLAGS="--max-semi-space-size=32".
  flags.push(...(process.env.BENCH_PROXY_NODE_FLAGS ?? '').split(' ').filter((flag) => flag !== ''))
  const { agent } = await startAgent(undefined, process.execPath, [...flags, RUNNER_BUNDLE, file], 60_000)
  return agent
}

/** Starts the bench app inside pod namespace `ns`; with `serve`, it also runs the echo server on {@link ECHO_PORT}. */
export async function startPodAgent(ns: string, serve: boolean): Promise<Agent> {
  const { agent } = await startAgent(ns, process.execPath, tsArgs('bench/lib/pod-agent.ts'))
  if (serve) await agent.request({ op: 'serve', port: ECHO_PORT })
  return agent
}

/** Starts `iperf3 -s` in `ns` and resolves once it listens. It stays up for the whole run and answers one test at a time, which is how the runs are sequenced. */
export async function startIperfServer(ns: string): Promise<void> {
  const child = spawnIn(ns, 'iperf3', ['-s', '-p', String(IPERF_PORT), '--forceflush'])
  child.stdin?.end()
  await new Promise<void>((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => reject(new Error(`iperf3 -s in ${ns} did not start`)), 10_000)
    child.stdout?.setEncoding('utf8').on('data', (text: string) => {
      out += text
      if (out.includes('Server listening')) {
        clearTimeout(timer)
        resolve()
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`iperf3 -s in ${ns} exited (${code})`))
    })
  })
}

