import { canonicalIp, isPort } from './address'
import { AmbientError, CoreErrorCode, describeValue } from './errors'

/** How a workload's traffic reaches it: through the mesh (`HBONE`) or not (`TCP`). */
export type WorkloadProtocol = 'HBONE' | 'TCP'

/** The default SPIFFE trust domain, as in Kubernetes and Istio. */
export const DEFAULT_TRUST_DOMAIN = 'cluster.local'

/** A workload: one pod (or VM) with its addresses and identity. */
export interface Workload {
  /** Unique and stable (a Kubernetes pod UID, for example). */
  readonly uid: string
  readonly name: string
  readonly namespace: string
  readonly serviceAccount: string
  /**
   * The node it runs on; empty when it runs on no node of the mesh (a VM
   * or an external endpoint that a control plane such as Istio describes).
   */
  readonly node: string
  /** IPv4 and/or IPv6 addresses, canonical once in a registry. */
  readonly addresses: readonly string[]
  /** `HBONE` when captured by the mesh, `TCP` when not. */
  readonly protocol: WorkloadProtocol
  readonly labels: Readonly<Record<string, string>>
  /** SPIFFE trust domain. Default {@link DEFAULT_TRUST_DOMAIN}. */
  readonly trustDomain?: string
}

/**
 * A service: virtual IPs in front of a set of workloads. A Kubernetes
 * Service is one with the host name `name.namespace.svc.<cluster domain>`;
 * a service with any other host name (`api.example.com`, or a wildcard
 * `*.example.com`) is one the mesh adds by itself, in the spirit of Istio's
 * ServiceEntry: the DNS proxy answers its name with its VIPs.
 */
export interface Service {
  /** Fully qualified host name: `name.namespace.svc.cluster.local` in Kubernetes, or any DNS name. */
  readonly hostname: string
  readonly namespace: string
  /** Virtual IPs (IPv4 and/or IPv6). */
  readonly vips: readonly string[]
  /**
   * Service port → target port on the endpoints. Target 0 means the
   * endpoints name their own target port in {@link endpointPorts} (Istio's
   * named target ports); endpoints that do not are skipped for that port.
   */
  readonly ports: Readonly<Record<number, number>>
  /** UIDs of the workloads behind the service. */
  readonly endpoints: readonly string[]
  /**
   * Per-endpoint target ports (endpoint uid → service port → target port),
   * preferred to {@link ports} for that endpoint: the same service port can
   * reach different ports on different endpoints (a named `targetPort` in
   * Kubernetes). Default: none.
   */
  readonly endpointPorts?: Readonly<Record<string, Readonly<Record<number, number>>>>
}

/** The SPIFFE ID of a workload: `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`. */
export function workloadIdentity(workload: Pick<Workload, 'namespace' | 'serviceAccount' | 'trustDomain'>): string {
  return `spiffe://${workload.trustDomain ?? DEFAULT_TRUST_DOMAIN}/ns/${workload.namespace}/sa/${workload.serviceAccount}`
}

/** The parts of a Kubernetes-style SPIFFE ID, or `undefined` if `id` is not of that form. */
export function parseWorkloadIdentity(
  id: string,
): { trustDomain: string; namespace: string; serviceAccount: string } | undefined {
  const match = /^spiffe:\/\/([a-z0-9._-]+)\/ns\/([a-zA-Z0-9._-]+)\/sa\/([a-zA-Z0-9._-]+)$/.exec(id)
  if (match === null) return undefined
  return { trustDomain: match[1]!, namespace: match[2]!, serviceAccount: match[3]! }
}

// Namespaces and service accounts become SPIFFE path segments (SPIFFE-ID §2.2).
const SEGMENT = /^[a-zA-Z0-9._-]+$/
// SPIFFE-ID §2.1, §2.3: lowercase letters, digits, dots, dashes and underscores, at most 255 bytes.
const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/

function invalid(what: string, field: string, value: unknown, expected: string): AmbientError {
  return new AmbientError(
    CoreErrorCode.InvalidWorkload,
    `${what}.${field}: expected ${expected}, got ${describeValue(value)}`,
    { details: { name: field, value } },
  )
}

function segment(what: string, field: string, value: unknown): string {
  if (typeof value !== 'string' || !SEGMENT.test(value) || value === '.' || value === '..') {
    throw invalid(what, field, value, 'a non-empty name of [a-zA-Z0-9._-]')
  }
  return value
}

function nonEmpty(what: string, field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) throw invalid(what, field, value, 'a non-empty string')
  return value
}

function labels(what: string, value: unknown): Record<string, string> {
  if (value === undefined) return {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(what, 'labels', value, 'an object of strings')
  for (const [key, v] of Object.entries(value)) {
    if (typeof v !== 'string') throw invalid(what, `labels.${key}`, v, 'a string')
  }
  return { ...(value as Record<string, string>) }
}

/** Validates a workload and returns a frozen copy with canonical addresses. */
export function normalizeWorkload(input: Workload): Workload {
  const what = `workload ${typeof input?.uid === 'string' ? JSON.stringify(input.uid) : ''}`.trim()
  if (typeof input !== 'object' || input === null) throw invalid('workload', '', input, 'an object')
  const addresses = input.addresses
  if (!Array.isArray(addresses)) throw invalid(what, 'addresses', addresses, 'an array of IP addresses')
  if (input.protocol !== 'HBONE' && input.protocol !== 'TCP') throw invalid(what, 'protocol', input.protocol, '"HBONE" or "TCP"')
  if (input.trustDomain !== undefined && (typeof input.trustDomain !== 'string' || !TRUST_DOMAIN.test(input.trustDomain))) {
    throw invalid(what, 'trustDomain', input.trustDomain, 'a trust domain of [a-z0-9._-], at most 255 characters')
  }
  const canonical = addresses.map((a: unknown, i) => {
    if (typeof a !== 'string') throw invalid(what, `addresses[${i}]`, a, 'an IP address')
    return canonicalIp(a, `${what}.addresses[${i}]`)
  })
  return Object.freeze({
    uid: nonEmpty(what, 'uid', input.uid),
    name: nonEmpty(what, 'name', input.name),
    namespace: segment(what, 'namespace', input.namespace),
    serviceAccount: segment(what, 'serviceAccount', input.serviceAccount),
    node: typeof input.node === 'string' ? input.node : nonEmpty(what, 'node', input.node),
    addresses: Object.freeze([...new Set(canonical)]),
    protocol: input.protocol,
    labels: Object.freeze(labels(what, input.labels)),
    ...(input.trustDomain === undefined ? {} : { trustDomain: input.trustDomain }),
  })
}

/** Validates a service and returns a frozen copy with canonical VIPs. */
export function normalizeService(input: Service): Service {
  if (typeof input !== 'object' || input === null) throw invalid('service', '', input, 'an object')
  const what = `service ${JSON.stringify(input.hostname)}`
  nonEmpty(what, 'hostname', input.hostname)
  if (!Array.isArray(input.vips)) throw invalid(what, 'vips', input.vips, 'an array of IP addresses')
  if (!Array.isArray(input.endpoints)) throw invalid(what, 'endpoints', input.endpoints, 'an array of workload uids')
  const ports = portMap(what, 'ports', input.ports, true)
  let endpointPorts: Record<string, Readonly<Record<number, number>>> | undefined
  if (input.endpointPorts !== undefined) {
    if (typeof input.endpointPorts !== 'object' || input.endpointPorts === null) {
      throw invalid(what, 'endpointPorts', input.endpointPorts, 'an object of endpoint uid → (port → target port)')
    }
    endpointPorts = {}
    for (const [uid, map] of Object.entries(input.endpointPorts)) {
      endpointPorts[uid] = Object.freeze(portMap(what, `endpointPorts.${uid}`, map, false))
    }
  }
  return Object.freeze({
    hostname: input.hostname,
    namespace: segment(what, 'namespace', input.namespace),
    vips: Object.freeze([...new Set(input.vips.map((v: unknown, i) => canonicalIp(v as string, `${what}.vips[${i}]`)))]),
    ports: Object.freeze(ports),
    endpoints: Object.freeze(input.endpoints.map((e: unknown, i) => nonEmpty(what, `endpoints[${i}]`, e))),
    ...(endpointPorts === undefined ? {} : { endpointPorts: Object.freeze(endpointPorts) }),
  })
}

function portMap(what: string, field: string, input: unknown, zeroTarget: boolean): Record<number, number> {
  if (typeof input !== 'object' || input === null) throw invalid(what, field, input, 'an object of port → target port')
  const ports: Record<number, number> = {}
  for (const [port, target] of Object.entries(input)) {
    const p = Number(port)
    if (!isPort(p) || String(p) !== port) throw invalid(what, field, port, 'a service port 1-65535')
    if (!isPort(target) && !(zeroTarget && target === 0)) {
      throw invalid(what, `${field}.${port}`, target, zeroTarget ? 'a target port 0-65535 (0: per endpoint)' : 'a target port 1-65535')
    }
    ports[p] = target as number
  }
  return ports
}
