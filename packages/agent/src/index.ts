/**
 * The node agent of an ambient mesh: it enrolls each pod of a node (enter
 * its network namespace, apply capture, start its workload proxy there),
 * keeps them enrolled, reconciles after a restart and releases pods that
 * leave, with no residue. It composes `@ambientkit/redirect` (capture) and
 * `@ambientkit/proxy` (the data plane), so that the proxy stays a pure data
 * plane.
 *
 * @example
 * ```ts
 * import { createPolicyStore, createWorkloadRegistry, type PodSource } from '@ambientkit/core'
 * import { createCertificateAuthority, createIdentityManager, createLocalCaSource } from '@ambientkit/identity'
 * import { createNodeAgent } from '@ambientkit/agent'
 * import { createNodeProxy } from '@ambientkit/proxy'
 *
 * declare const podSource: PodSource // which pods to capture: a control plane, a Kubernetes pod watcher...
 * const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
 * const nodeProxy = createNodeProxy({
 *   nodeName: 'node-1',
 *   registry: createWorkloadRegistry(),
 *   identities: createIdentityManager({ source: createLocalCaSource(ca) }),
 *   policies: createPolicyStore(),
 * })
 * await nodeProxy.start()
 * await using agent = createNodeAgent({ nodeProxy, podSource, stateFile: '/run/ambientkit/agent.json' })
 * await agent.start() // every listed pod captured and proxied; follows changes
 * ```
 *
 * @packageDocumentation
 */
export {
  createNodeAgent,
  type NodeAgent,
  type NodeAgentDnsOptions,
  type NodeAgentOptions,
  type NodeAgentProbeOptions,
  type NodeAgentState,
  type NodeAgentWorkloadApi,
  type ReconcileReport,
} from './node-agent'
