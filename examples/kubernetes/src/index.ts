/**
 * ambientkit on Kubernetes: a `PodSource` that tells a node agent which
 * pods of its node to capture (pods or namespaces labelled
 * `istio.io/dataplane-mode=ambient`), a sync that keeps a workload registry
 * in step with the cluster's pods and services, the pure mapping from
 * Kubernetes objects to core's workload and service model, and a resolver
 * that finds a pod's network namespace from a host-PID DaemonSet.
 *
 * @example
 * ```ts
 * import { createKubernetesPodSource } from '@ambientkit/example-kubernetes'
 *
 * const source = createKubernetesPodSource({ nodeName: process.env.NODE_NAME!, trustDomain: 'cluster.local' })
 * source.subscribe((event) => console.log(event.type, event.type === 'upsert' ? event.pod.workload.name : event.uid))
 * for (const pod of await source.list({ signal: AbortSignal.timeout(60_000) })) {
 *   console.log('capture', pod.workload.namespace, pod.workload.name, 'in', pod.netnsPath)
 * }
 * process.once('SIGTERM', () => source.close())
 * ```
 *
 * @packageDocumentation
 */
export {
  AMBIENT_REDIRECTION_ANNOTATION,
  AMBIENT_REDIRECTION_DISABLED,
  DATAPLANE_MODE_AMBIENT,
  DATAPLANE_MODE_LABEL,
  DATAPLANE_MODE_NONE,
  SIDECAR_STATUS_ANNOTATION,
  evaluatePod,
  podAddresses,
  podToWorkload,
  wantsAmbient,
  type EvaluatePodOptions,
  type PodDecision,
  type PodSkipReason,
  type PodToWorkloadOptions,
} from './pod'
export {
  SERVICE_NAME_LABEL,
  serviceFromKubernetes,
  type ServiceDecision,
  type ServiceFromKubernetesOptions,
  type ServiceSkipReason,
} from './service'
export { createKubernetesRegistrySync, type KubernetesRegistrySync, type KubernetesRegistrySyncOptions } from './registry-sync'
export { createProcNetnsResolver, podUidFromCgroup, type NetnsResolver, type ProcNetnsResolverOptions } from './netns'
export {
  createKubernetesPodSource,
  type BackoffOptions,
  type KubernetesPodSource,
  type KubernetesPodSourceOptions,
  type KubernetesPodSourceState,
  type NetnsRetryOptions,
  type SkippedPod,
} from './pod-source'
