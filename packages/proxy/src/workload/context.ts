import {
  PROXY_MARK,
  tryCanonicalIp,
  type ConnectFdOptions,
  type Logger,
  type NetnsSockets,
  type PolicyStore,
  type SocketAddress,
  type Workload,
  type WorkloadRegistry,
} from '@ambientkit/core'
import type { AccessLogPeer } from '../access-log'
import type { TransportClient } from '../transport/contract'
import type { ConnectionManager } from './connections'
import type { WorkloadProxyPorts } from './ports'
import type { RouteContext } from './route'

/** What the parts of one workload proxy share: its workload, namespace, registry, policies and connections. */
export interface WorkloadContext extends RouteContext {
  /** The workload, as last updated (labels change; identity and addresses do not). */
  workload: Workload
  /** The workload's SPIFFE ID. */
  readonly identity: string
  readonly netns: NetnsSockets
  readonly registry: WorkloadRegistry
  readonly policies: PolicyStore
  readonly ports: WorkloadProxyPorts
  readonly inboundPlaintext: 'permissive' | 'strict'
  readonly preserveSourceAddress: boolean
  readonly connections: ConnectionManager
  readonly client: TransportClient
  readonly logger: Logger
  /** Set once the proxy drains or closes: nothing new is accepted. */
  readonly stopping: () => boolean
}

/** A peer as the access log names it: canonical address, port, and the workload the registry knows there. */
export function peerOf(registry: WorkloadRegistry, address: string | undefined, port?: number): AccessLogPeer {
  const ip = (address && tryCanonicalIp(address)) || address || 'unknown'
  const workload = registry.workloadByAddress(ip)
  return { address: ip, ...(port ? { port } : {}), ...(workload ? workloadNames(workload) : {}) }
}

/** A workload as the access log names it at `destination`. */
export function workloadPeer(workload: Workload, destination: SocketAddress, identity?: string): AccessLogPeer {
  return { address: destination.address, port: destination.port, ...workloadNames(workload), ...(identity === undefined ? {} : { identity }) }
}

// Istio's canonical service and revision: the first of these labels a workload has (istio/pkg/kube/labels).
const CANONICAL_NAME_LABELS = ['service.istio.io/canonical-name', 'app.kubernetes.io/name', 'app'] as const
const CANONICAL_REVISION_LABELS = ['service.istio.io/canonical-revision', 'app.kubernetes.io/version', 'version'] as const

/** A workload's names as telemetry reports them: name, namespace, canonical service and revision. */
export function workloadNames(workload: Workload): Pick<AccessLogPeer, 'workload' | 'namespace' | 'canonicalService' | 'canonicalRevision'> {
  const first = (names: readonly string[]): string | undefined => names.map((name) => workload.labels[name]).find((value) => value !== undefined && value !== '')
  return {
    workload: workload.name,
    namespace: workload.namespace,
    canonicalService: first(CANONICAL_NAME_LABELS) ?? workload.name,
    canonicalRevision: first(CANONICAL_REVISION_LABELS) ?? 'latest',
  }
}

/**
 * How the proxy connects inside the pod: marked 0x539 (capture lets it
 * pass), and with `clientAddress` as the source when preserving it
 * (IP_TRANSPARENT; needs the route table redirect installs for it).
 */
export function appConnectOptions(context: WorkloadContext, destination: SocketAddress, signal: AbortSignal, clientAddress?: string): ConnectFdOptions {
  const preserve = context.preserveSourceAddress && clientAddress !== undefined
  return {
    host: destination.address,
    port: destination.port,
    mark: PROXY_MARK,
    signal,
    ...(preserve ? { localAddress: clientAddress, transparent: true } : {}),
  }
}
