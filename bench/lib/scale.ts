import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createCertificateAuthority, type CertificateAuthorityPem } from '@ambientkit/identity'
import type { Workload } from '@ambientkit/core'
import { createTestNetwork, type TestNetwork } from '../../test/support/netns'
import { bundleNodeRunner, ECHO_PORT, startNodeRunner, startPodAgent, workloadOf } from './mesh'
import { stopAll, type Agent } from './processes'
import { wantsJson } from './table'
import { capturePods, PREFIX } from './topology'
import { rssKiB } from './proc'

/** What the scale benches share: open-file limits, descriptor counts and one node proxy process. */

/**
 * Raises this process's RLIMIT_NOFILE (soft and hard) to `limit` with
 * prlimit(1); every process the bench starts afterwards inherits it (Node
 * raises its soft limit to the hard one at start). Raising the hard limit
 * needs CAP_SYS_RESOURCE: without it, the hard limit stays and is returned,
 * with a line saying so. Returns the hard limit in force.
 */
export function raiseFileLimit(limit: number, log: (message: string) => void): number {
  try {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${limit}:${limit}`], { stdio: ['ignore', 'ignore', 'pipe'] })
    return limit
  } catch (err) {
    const hard = Number(/^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1])
    log(`could not raise RLIMIT_NOFILE to ${limit} (${String((err as { stderr?: Buffer }).stderr ?? err).trim()}): the hard limit stays ${hard}`)
    return hard
  }
}

/** A process's open descriptors, and how many of them are sockets, from /proc/<pid>/fd. */
export function descriptors(pid: number): { total: number; sockets: number } {
  let total = 0
  let sockets = 0
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`)
      total += 1
      if (target.startsWith('socket:')) sockets += 1
    } catch {
      // Closed between the listing and the read.
    }
  }
  return { total, sockets }
}

/** A proxy process's memory and descriptors after a full GC: what it holds, not what V8 has yet to collect. */
export async function footprint(runner: Agent): Promise<{ rssKiB: number; fds: number; sockets: number }> {
  await runner.request({ op: 'gc' })
  const { total, sockets } = descriptors(runner.pid)
  return { rssKiB: rssKiB(runner.pid), fds: total, sockets }
}

/** One node proxy process (bench/lib/node-runner.ts, bundled, on the data path `BENCH_DATA_PATH` names) with a fresh CA; `close` ends it. */
export async function startNodeProxy(
  workloads: Workload[],
  enroll: Array<{ uid: string; netnsPath: string }>,
): Promise<{ runner: Agent; close(): Promise<void> }> {
  await bundleNodeRunner()
  const ca = await createCertificateAuthority({ trustDomain: 'cluster.local', keyType: 'ecdsa-p256' })
  const dir = mkdtempSync(join(tmpdir(), 'ambientkit-scale-'))
  try {
    const caPem: CertificateAuthorityPem = ca.save()
    const runner = await startNodeRunner(dir, { nodeName: 'node-1', ca: caPem, workloads, enroll })
    return {
      runner,
      async close() {
        await runner.close()
        rmSync(dir, { recursive: true, force: true })
      },
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true })
    throw err
  }
}

/** Linear least-squares slope of `ys` over `xs` (per unit of x). */
export function slope(xs: readonly number[], ys: readonly number[]): number {
  const n = xs.length
  if (n < 2) return 0
  const mx = xs.reduce((a, b) => a + b, 0) / n
  const my = ys.reduce((a, b) => a + b, 0) / n
  let num = 0
  let den = 0
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my)
    den += (xs[i]! - mx) ** 2
  }
  return den === 0 ? 0 : num / den
}

/** A client pod and an echo server pod on one node, both captured, with their apps running; the node proxy is started separately. */
export interface PodPair {
  readonly network: TestNetwork
  /** The client pod's app (bench/lib/pod-agent.ts). */
  readonly app: Agent
  readonly workloads: Workload[]
  readonly enroll: Array<{ uid: string; netnsPath: string }>
  /** The server pod's echo server. */
  readonly target: { host: string; port: number }
}

/** Builds a {@link PodPair}; on failure, what was created is deleted. The caller ends the apps (stopAll) and runs `network.cleanup()`. */
export async function createPodPair(): Promise<PodPair> {
  const network = createTestNetwork(PREFIX)
  try {
    const node = await network.addNode()
    const [client, server] = [await network.addPod(node), await network.addPod(node)]
    for (const pod of [client, server]) await pod.exec('sysctl', ['-qw', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=20000 65000', 'net.core.somaxconn=8192'])
    await capturePods([client, server])
    const workloads = [workloadOf(client, 'client'), workloadOf(server, 'server')]
    const enroll = [client, server].map((pod, i) => ({ uid: workloads[i]!.uid, netnsPath: pod.path }))
    const app = await startPodAgent(client.name, false)
    await startPodAgent(server.name, true)
    return { network, app, workloads, enroll, target: { host: server.ipv4, port: ECHO_PORT } }
  } catch (err) {
    await stopAll()
    await network.cleanup()
    throw err
  }
}

/** Prints a bench's tables on stdout, or with `--json` its result as JSON on stdout and the tables on stderr (where its log goes). */
export function report(tables: string, result: unknown): void {
  if (wantsJson) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
    process.stderr.write(tables)
  } else {
    process.stdout.write(tables)
  }
}
