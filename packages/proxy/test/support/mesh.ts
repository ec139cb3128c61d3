import { createPolicyStore, createWorkloadRegistry, type PolicyStore, type Workload, type WorkloadRegistry } from '@ambientkit/core'
import { createCertificateAuthority, createIdentityManager, createLocalCaSource, type CertificateAuthority, type IdentityManager } from '@ambientkit/identity'
import { createNodeProxy, type AccessLogEntry, type NodeProxy, type NodeProxyOptions, type WorkloadProxyDefaults } from '@ambientkit/proxy'
import { openNetns, type Netns } from '@ambientkit/redirect'
import type { TestPod } from '../../../../test/support/netns'

/** A pod of the test mesh: its namespace, its workload and an open handle on its netns. */
export interface MeshPod {
  readonly pod: TestPod
  readonly workload: Workload
  readonly netns: Netns
}

/** The shared control-plane state of a test mesh. */
export interface TestControlPlane {
  readonly ca: CertificateAuthority
  readonly registry: WorkloadRegistry
  readonly policies: PolicyStore
  readonly accessLog: AccessLogEntry[]
  /**
   * The first access-log entry at index `from` or later that matches, once it
   * is written. A connection's entry is written when the proxy has closed it,
   * which the connection's app may see first.
   */
  logged(match: (entry: AccessLogEntry) => boolean, from: number): Promise<AccessLogEntry>
  /** A node proxy with its own identity manager (as on a real node). */
  nodeProxy(nodeName: string, defaults?: WorkloadProxyDefaults, options?: Pick<NodeProxyOptions, 'sameNodeFastPath'>): { proxy: NodeProxy; identities: IdentityManager }
  close(): Promise<void>
}

export async function createTestControlPlane(): Promise<TestControlPlane> {
  const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
  const registry = createWorkloadRegistry()
  const policies = createPolicyStore()
  const accessLog: AccessLogEntry[] = []
  const waiters = new Set<() => void>()
  const record = (entry: AccessLogEntry): void => {
    accessLog.push(entry)
    for (const waiter of [...waiters]) waiter()
  }
  const closers: Array<() => Promise<void>> = []
  return {
    ca,
    registry,
    policies,
    accessLog,
    logged(match, from) {
      return new Promise((resolve) => {
        const check = (): void => {
          const entry = accessLog.slice(from).find(match)
          if (entry === undefined) return
          waiters.delete(check)
          resolve(entry)
        }
        waiters.add(check)
        check()
      })
    },
    nodeProxy(nodeName, defaults, options) {
      const identities = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
      const proxy = createNodeProxy({ nodeName, registry, identities, policies, admin: { host: '127.0.0.1', port: 0 }, accessLog: record, ...(defaults ? { workloadDefaults: defaults } : {}), ...options })
      closers.push(async () => {
        await proxy.close()
        await identities.close()
      })
      return { proxy, identities }
    },
    async close() {
      await Promise.all(closers.splice(0).map((close) => close()))
    },
  }
}

export function meshWorkload(pod: TestPod, fields: Pick<Workload, 'name' | 'namespace' | 'serviceAccount'> & Partial<Workload>): Workload {
  return {
    uid: `uid-${pod.name}`,
    node: `node-${pod.node.index}`,
    addresses: [pod.ipv4, pod.ipv6],
    protocol: 'HBONE',
    labels: { app: fields.name },
    ...fields,
  }
}

export function meshPod(pod: TestPod, workload: Workload): MeshPod {
  return { pod, workload, netns: openNetns(pod.path) }
}

/** The Prometheus text lines of metric `name` a node proxy serves (with their labels and values). */
export async function metricLines(proxy: NodeProxy, name: string): Promise<string[]> {
  const exposed = await proxy.metrics.exposition?.()
  if (exposed === undefined) throw new Error('the node proxy serves no Prometheus metrics (is prom-client installed?)')
  return exposed.body.split('\n').filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
}
