import { execFileSync } from 'node:child_process'
import { applyCapture, openNetns } from '@ambientkit/redirect'
import { createTestNetwork, type TestNetwork, type TestNode, type TestPod } from '../../test/support/netns'

/**
 * The bench's namespaces: the same nodes-and-pods topology the privileged
 * tests build (router namespaces with a bridge; pods with a veth into it),
 * under the prefix `akb-<pid>-`, so a bench killed with SIGKILL can be
 * cleaned up by the next run.
 */

export const PREFIX = 'akb'

/**
 * Deletes namespaces of earlier bench runs whose process is gone. Only names
 * `akb-<pid>-…` with a dead `<pid>` are touched.
 */
export function sweepStaleNamespaces(): string[] {
  const listing = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
  const removed: string[] = []
  for (const line of listing.split('\n')) {
    const name = line.split(' ')[0] ?? ''
    const match = new RegExp(`^${PREFIX}-(\\d+)-`).exec(name)
    if (match === null) continue
    const pid = Number(match[1])
    let alive = true
    try {
      process.kill(pid, 0)
    } catch {
      alive = false
    }
    if (alive) continue
    execFileSync('ip', ['netns', 'del', name])
    removed.push(name)
  }
  return removed
}

/** Kernel settings every bench pod gets: many short connections must not run out of ports. */
async function tunePod(pod: TestPod): Promise<void> {
  // tw_reuse: a connect may reuse a port in TIME_WAIT (the connection-rate runs
  // open tens of thousands); the wider range keeps clear of the 15001-15021 proxy ports.
  await pod.exec('sysctl', ['-qw', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=20000 65000'])
}

/** The bench's topology: two nodes; plain pods for the baselines, mesh pods for ambientkit (capture timing adds pods of its own). */
export interface BenchTopology {
  readonly network: TestNetwork
  readonly nodes: readonly [TestNode, TestNode]
  /** Baseline pods (no capture): client on node 1, server on node 2. */
  readonly plainClient: TestPod
  readonly plainServer: TestPod
  /** Mesh pods: client and same-node server on node 1, cross-node server on node 2. */
  readonly meshClient: TestPod
  readonly meshServerSame: TestPod
  readonly meshServerCross: TestPod
}

/** Builds the topology. On failure, what was created is deleted before the error propagates. */
export async function createBenchTopology(): Promise<BenchTopology> {
  const network = createTestNetwork(PREFIX)
  try {
    const n1 = await network.addNode()
    const n2 = await network.addNode()
    const pods = {
      plainClient: await network.addPod(n1),
      plainServer: await network.addPod(n2),
      meshClient: await network.addPod(n1),
      meshServerSame: await network.addPod(n1),
      meshServerCross: await network.addPod(n2),
    }
    await Promise.all(Object.values(pods).map(tunePod))
    return { network, nodes: [n1, n2], ...pods }
  } catch (err) {
    await network.cleanup()
    throw err
  }
}

/** Applies the mesh's capture rules (the default backend) in each pod, as a node agent does on enrollment. */
export async function capturePods(pods: readonly TestPod[]): Promise<void> {
  for (const pod of pods) {
    const netns = openNetns(pod.path)
    try {
      await applyCapture(netns)
    } finally {
      await netns.close()
    }
  }
}
