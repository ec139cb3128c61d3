import type { V1Namespace, V1Pod } from '@kubernetes/client-node'
import { isAmbientError, normalizeWorkload, tryCanonicalIp, type Workload, type WorkloadProtocol } from '@ambientkit/core'

/**
 * The label that puts a pod (or every pod of a namespace) into ambient mode,
 * with Istio's name and values so clusters already labelled for Istio ambient
 * need no relabelling (istio/api `label.IoIstioDataplaneMode`).
 */
export const DATAPLANE_MODE_LABEL = 'istio.io/dataplane-mode'
/** {@link DATAPLANE_MODE_LABEL} value that opts in. */
export const DATAPLANE_MODE_AMBIENT = 'ambient'
/** {@link DATAPLANE_MODE_LABEL} value, on a pod, that opts out even when its namespace opts in. */
export const DATAPLANE_MODE_NONE = 'none'
/**
 * The annotation istio-cni reads to leave a pod out of ambient mode
 * whatever its labels and its namespace's (Istio's `PodHasOptOut`):
 * `ambient.istio.io/redirection: disabled`. It is the way to opt out when
 * the pod's labels are owned by someone else (a Helm chart, an operator).
 */
export const AMBIENT_REDIRECTION_ANNOTATION = 'ambient.istio.io/redirection'
/** {@link AMBIENT_REDIRECTION_ANNOTATION} value that opts out. */
export const AMBIENT_REDIRECTION_DISABLED = 'disabled'
/**
 * Istio's sidecar injector writes this annotation: a pod that already has a
 * sidecar must not also be captured, or its traffic is proxied twice.
 */
export const SIDECAR_STATUS_ANNOTATION = 'sidecar.istio.io/status'

/** Why {@link evaluatePod} left a pod out of the mesh. */
export type PodSkipReason =
  /** `spec.nodeName` is another node (or unset: not scheduled yet). */
  | 'other-node'
  /** `spec.hostNetwork`: capture rules would land in the node's own namespace. */
  | 'host-network'
  /** Neither the pod nor its namespace has `istio.io/dataplane-mode=ambient`. */
  | 'not-ambient'
  /** The pod has the label `istio.io/dataplane-mode=none` or the annotation `ambient.istio.io/redirection: disabled`. */
  | 'opted-out'
  /** The pod has an Istio sidecar. */
  | 'sidecar'
  /** `metadata.deletionTimestamp` is set. */
  | 'terminating'
  /** `status.phase` is not `Running` (Pending while init containers run, Succeeded, Failed). */
  | 'not-running'
  /** No `status.podIPs` / `status.podIP` yet. */
  | 'no-ip'
  /** The object lacks what a workload needs (uid, name...) or holds an invalid value. */
  | 'invalid'

/** The outcome of {@link evaluatePod}. */
export type PodDecision =
  | { readonly enroll: true; readonly workload: Workload }
  | { readonly enroll: false; readonly reason: PodSkipReason; readonly message: string }

/** Options of {@link evaluatePod}. */
export interface EvaluatePodOptions {
  /** The node the caller runs on; pods elsewhere are skipped with `other-node`. */
  nodeName: string
  /** SPIFFE trust domain written into the workload. Default: none (core's `cluster.local` applies). */
  trustDomain?: string
}

/** Options of {@link podToWorkload}. */
export interface PodToWorkloadOptions {
  /** SPIFFE trust domain written into the workload. Default: none (core's `cluster.local` applies). */
  trustDomain?: string
  /** Default `'HBONE'`; a registry fed with pods outside the mesh uses `'TCP'` for them. */
  protocol?: WorkloadProtocol
}

/**
 * The pod's IP addresses, IPv4 and IPv6, canonical: `status.podIPs`, or the
 * older single `status.podIP` when the list is absent (as in Istio's
 * `GetPodIPsIfPresent`). Unparsable entries are dropped.
 */
export function podAddresses(pod: V1Pod): string[] {
  const listed = pod.status?.podIPs?.map((entry) => entry.ip) ?? []
  const raw = listed.length > 0 ? listed : pod.status?.podIP === undefined ? [] : [pod.status.podIP]
  const addresses: string[] = []
  for (const ip of raw) {
    const canonical = typeof ip === 'string' ? tryCanonicalIp(ip) : undefined
    if (canonical !== undefined && !addresses.includes(canonical)) addresses.push(canonical)
  }
  return addresses
}

/**
 * Maps a pod to core's {@link Workload}, whatever its mesh membership:
 * identity from `spec.serviceAccountName` (default `default`, as the API
 * server does), addresses from {@link podAddresses}, the pod's labels.
 *
 * @throws `ERR_AMBIENT_INVALID_WORKLOAD` when the pod lacks a uid, name,
 *   namespace or node, or a field is not a valid SPIFFE path segment.
 */
export function podToWorkload(pod: V1Pod, options: PodToWorkloadOptions = {}): Workload {
  const metadata = pod.metadata ?? {}
  return normalizeWorkload({
    uid: metadata.uid as string,
    name: metadata.name as string,
    namespace: metadata.namespace as string,
    serviceAccount: pod.spec?.serviceAccountName ?? pod.spec?.serviceAccount ?? 'default',
    node: pod.spec?.nodeName as string,
    addresses: podAddresses(pod),
    protocol: options.protocol ?? 'HBONE',
    labels: metadata.labels ?? {},
    ...(options.trustDomain === undefined ? {} : { trustDomain: options.trustDomain }),
  })
}

/** How the pod opts out of ambient mode, if it does: by label or by annotation, in words. */
function optOut(pod: V1Pod): string | undefined {
  if (pod.metadata?.labels?.[DATAPLANE_MODE_LABEL] === DATAPLANE_MODE_NONE) return `labelled ${DATAPLANE_MODE_LABEL}=${DATAPLANE_MODE_NONE}`
  if (pod.metadata?.annotations?.[AMBIENT_REDIRECTION_ANNOTATION] === AMBIENT_REDIRECTION_DISABLED) {
    return `annotated ${AMBIENT_REDIRECTION_ANNOTATION}: ${AMBIENT_REDIRECTION_DISABLED}`
  }
  return undefined
}

/** True when the pod, or else its namespace, asks for ambient mode and the pod does not opt out (by label or annotation). */
export function wantsAmbient(pod: V1Pod, namespace: V1Namespace | undefined): boolean {
  if (optOut(pod) !== undefined) return false
  const podMode = pod.metadata?.labels?.[DATAPLANE_MODE_LABEL]
  return podMode === DATAPLANE_MODE_AMBIENT || namespace?.metadata?.labels?.[DATAPLANE_MODE_LABEL] === DATAPLANE_MODE_AMBIENT
}

/**
 * Decides whether a pod on this node belongs in the mesh now, and as which
 * workload. Pure: the same objects always give the same answer, so it is
 * tested against recorded API objects.
 *
 * Membership follows Istio's `PodRedirectionEnabled` (cni/pkg/util/podutil.go):
 * pod or namespace label `istio.io/dataplane-mode=ambient`, no pod label
 * `=none` nor annotation `ambient.istio.io/redirection: disabled`, no
 * sidecar, not host network. On top of that a pod is only
 * enrolled once `Running` with an IP and while not terminating, because
 * without a CNI plugin there is no earlier moment at which its network
 * namespace is known to be complete.
 *
 * @param namespace - The pod's namespace object; `undefined` when not seen
 *   yet (then only the pod's own label can opt it in).
 */
export function evaluatePod(pod: V1Pod, namespace: V1Namespace | undefined, options: EvaluatePodOptions): PodDecision {
  const name = `${pod.metadata?.namespace ?? '?'}/${pod.metadata?.name ?? '?'}`
  const skip = (reason: PodSkipReason, why: string): PodDecision => ({ enroll: false, reason, message: `pod ${name}: ${why}` })
  const node = pod.spec?.nodeName
  if (node !== options.nodeName) return skip('other-node', `scheduled on ${node === undefined ? 'no node yet' : JSON.stringify(node)}, not ${JSON.stringify(options.nodeName)}`)
  if (pod.spec?.hostNetwork === true) return skip('host-network', 'uses the host network namespace')
  const opted = optOut(pod)
  if (opted !== undefined) return skip('opted-out', opted)
  if (!wantsAmbient(pod, namespace)) return skip('not-ambient', `neither the pod nor its namespace is labelled ${DATAPLANE_MODE_LABEL}=${DATAPLANE_MODE_AMBIENT}`)
  if (pod.metadata?.annotations?.[SIDECAR_STATUS_ANNOTATION] !== undefined) return skip('sidecar', `has an Istio sidecar (${SIDECAR_STATUS_ANNOTATION})`)
  if (pod.metadata?.deletionTimestamp !== undefined && pod.metadata.deletionTimestamp !== null) return skip('terminating', 'is terminating')
  const phase = pod.status?.phase
  if (phase !== 'Running') return skip('not-running', `phase is ${phase ?? 'unset'}, not Running`)
  if (podAddresses(pod).length === 0) return skip('no-ip', 'has no IP address yet')
  try {
    return { enroll: true, workload: podToWorkload(pod, options.trustDomain === undefined ? {} : { trustDomain: options.trustDomain }) }
  } catch (err) {
    if (isAmbientError(err)) return skip('invalid', err.message)
    throw err
  }
}
