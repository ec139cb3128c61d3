import { canonicalIp, normalizeService, type AuthorizationMatch, type Service, type Workload } from '@ambientkit/core'
import type {
  XdsAuthorization,
  XdsCidr,
  XdsExtension,
  XdsGatewayAddress,
  XdsMatch,
  XdsNetworkAddress,
  XdsService,
  XdsStringMatch,
  XdsWorkload,
} from './xds-types'

/*
 * Istio's WDS resources → core's model. Each function either returns the
 * converted resource or throws a ResourceError whose message becomes the
 * reason in the NACK ("<name>: <reason>"), so one bad resource is refused
 * alone. Where ztunnel silently drops a malformed part of a policy (an
 * address of the wrong length, a string match with no value), this refuses
 * the whole policy: dropping an element from a positive list can turn
 * "only these" into "anyone".
 */

/** A resource refused; the message is the reason sent back in the NACK. */
export class ResourceError extends Error {}

const refuse = (reason: string): never => {
  throw new ResourceError(reason)
}

/** Enum names by number, as in the vendored protos. */
const ENUMS = {
  tunnelProtocol: ['NONE', 'HBONE', 'LEGACY_ISTIO_MTLS'],
  workloadStatus: ['HEALTHY', 'UNHEALTHY'],
  workloadType: ['DEPLOYMENT', 'CRONJOB', 'POD', 'JOB'],
  networkMode: ['STANDARD', 'HOST_NETWORK'],
  appProtocol: ['UNKNOWN', 'HTTP11', 'HTTP2', 'GRPC', 'TCP', 'TLS'],
  applicationTunnel: ['NONE', 'PROXY'],
  ipFamilies: ['AUTOMATIC', 'IPV4_ONLY', 'IPV6_ONLY', 'DUAL'],
  loadBalancingScope: ['UNSPECIFIED_SCOPE', 'REGION', 'ZONE', 'SUBZONE', 'NODE', 'CLUSTER', 'NETWORK'],
  loadBalancingMode: ['UNSPECIFIED_MODE', 'STRICT', 'FAILOVER', 'PASSTHROUGH'],
  healthPolicy: ['ONLY_HEALTHY', 'ALLOW_ALL'],
  visibility: ['PUBLIC', 'NAMESPACE'],
  scope: ['GLOBAL', 'NAMESPACE', 'WORKLOAD_SELECTOR'],
  action: ['ALLOW', 'DENY'],
} as const

function enumName<K extends keyof typeof ENUMS>(kind: K, value: number, field: string): (typeof ENUMS)[K][number] {
  const name = ENUMS[kind][value]
  return name ?? refuse(`${field}: unknown enum value ${value}`)
}

/** An IP address from its 4 or 16 bytes, in core's canonical text. */
export function ipFromBytes(bytes: Buffer, field: string): string {
  if (bytes.length === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`
  if (bytes.length === 16) {
    const groups: string[] = []
    for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16))
    return canonicalIp(groups.join(':'), field)
  }
  return refuse(`${field}: an address must be 4 or 16 bytes long, got ${bytes.length}`)
}

/** The address of a CIDR with the host bits cleared (ztunnel's IpNet compares only the network part). */
function cidrFromBytes(cidr: XdsCidr, field: string): string {
  const max = cidr.address.length * 8
  if (max !== 32 && max !== 128) refuse(`${field}: an address must be 4 or 16 bytes long, got ${cidr.address.length}`)
  if (cidr.length > max) refuse(`${field}: prefix length ${cidr.length} exceeds ${max}`)
  // Core reads ::ffff:a.b.c.d as IPv4, which would change what the prefix covers.
  if (max === 128 && cidr.address.subarray(0, 10).every((b) => b === 0) && cidr.address[10] === 0xff && cidr.address[11] === 0xff) {
    refuse(`${field}: IPv4-mapped IPv6 ranges are not supported`)
  }
  const masked = Buffer.from(cidr.address)
  for (let bit = cidr.length; bit < max; bit++) masked[bit >> 3]! &= ~(0x80 >> (bit & 7))
  return `${ipFromBytes(masked, field)}/${cidr.length}`
}

function port(value: number, field: string, allowZero: boolean): number {
  if (!Number.isInteger(value) || value > 65535 || (!allowZero && value === 0)) {
    refuse(`${field}: expected a port ${allowZero ? '0' : '1'}-65535, got ${value}`)
  }
  return value
}

// ---- views: the Istio side of each resource, for configDump() -------------

/** A gateway (waypoint or network gateway) as `/config_dump` shows it. */
export interface GatewayView {
  readonly destination: string
  readonly hboneMtlsPort: number
}

/** A network address as `/config_dump` shows it: `network/ip`, or `network/ip/length` for a CIDR. */
function networkAddressText(a: XdsNetworkAddress, field: string): string {
  const ip = ipFromBytes(a.address, field)
  if (a.length !== undefined && a.length !== null) {
    const max = a.address.length * 8
    if (a.length > max) refuse(`${field}: prefix length ${a.length} exceeds ${max}`)
    return `${a.network}/${ip}/${a.length}`
  }
  return `${a.network}/${ip}`
}

function gateway(g: XdsGatewayAddress | null, field: string): GatewayView | undefined {
  if (g === null) return undefined
  let destination: string
  if (g.destination === 'hostname' && g.hostname !== null) destination = `${g.hostname.namespace}/${g.hostname.hostname}`
  else if (g.destination === 'address' && g.address !== null) destination = networkAddressText(g.address, `${field}.address`)
  else return refuse(`${field}: a gateway address needs a hostname or an address`)
  return { destination, hboneMtlsPort: port(g.hboneMtlsPort, `${field}.hboneMtlsPort`, true) }
}

function extensionNames(extensions: readonly XdsExtension[]): string[] | undefined {
  return extensions.length === 0 ? undefined : extensions.map((e) => e.name)
}

/** A workload as Istio sent it, in the shape of ztunnel's `/config_dump` (camelCase, addresses as text). */
export interface WorkloadView {
  readonly uid: string
  readonly name: string
  readonly namespace: string
  readonly workloadIps: readonly string[]
  readonly hostname?: string
  readonly network: string
  readonly protocol: string
  readonly trustDomain: string
  readonly serviceAccount: string
  readonly node: string
  readonly waypoint?: GatewayView
  readonly networkGateway?: GatewayView
  readonly canonicalName: string
  readonly canonicalRevision: string
  readonly workloadType: string
  readonly workloadName: string
  readonly nativeTunnel: boolean
  readonly applicationTunnel?: { readonly protocol: string; readonly port: number }
  readonly services: Readonly<Record<string, Readonly<Record<number, number>>>>
  readonly authorizationPolicies: readonly string[]
  readonly status: string
  readonly clusterId: string
  readonly locality?: { readonly region: string; readonly zone: string; readonly subzone: string }
  readonly networkMode: string
  readonly capacity: number
  readonly extensions?: readonly string[]
}

/** What a WDS Workload becomes. */
export interface ConvertedWorkload {
  /** For core's registry. */
  readonly workload: Workload
  /** The services it is an endpoint of: `namespace/hostname` → service port → its target port (0: the service's). */
  readonly services: ReadonlyMap<string, Readonly<Record<number, number>>>
  readonly healthy: boolean
  /** Keys (`namespace/name`) of the policies that select it. */
  readonly policies: readonly string[]
  readonly view: WorkloadView
}

/** Labels under which a workload's canonical service and revision reach core (Istio's own label names). */
export const CANONICAL_NAME_LABEL = 'service.istio.io/canonical-name'
export const CANONICAL_REVISION_LABEL = 'service.istio.io/canonical-revision'

/** Converts a WDS Workload; `name` is its xDS resource name, which must be its uid. */
export function convertWorkload(w: XdsWorkload, name: string): ConvertedWorkload {
  if (w.uid === '') refuse('workload without uid')
  if (w.uid !== name) refuse(`the resource name must be the workload uid ${JSON.stringify(w.uid)}`)
  const protocol = enumName('tunnelProtocol', w.tunnelProtocol, 'tunnelProtocol')
  if (protocol === 'LEGACY_ISTIO_MTLS') refuse('unsupported tunnel protocol LEGACY_ISTIO_MTLS')
  const status = enumName('workloadStatus', w.status, 'status')
  const networkMode = enumName('networkMode', w.networkMode, 'networkMode')
  const workloadIps = w.addresses.map((a, i) => ipFromBytes(a, `addresses[${i}]`))
  const services = new Map<string, Record<number, number>>()
  const serviceView: Record<string, Record<number, number>> = {}
  for (const [key, list] of Object.entries(w.services)) {
    const slash = key.indexOf('/')
    if (slash <= 0 || slash === key.length - 1) refuse(`services: key ${JSON.stringify(key)} is not "namespace/hostname"`)
    const ports: Record<number, number> = {}
    for (const [i, p] of list.ports.entries()) {
      enumName('appProtocol', p.appProtocol, `services[${key}].ports[${i}].appProtocol`)
      ports[port(p.servicePort, `services[${key}].ports[${i}].servicePort`, false)] = port(p.targetPort, `services[${key}].ports[${i}].targetPort`, true)
    }
    services.set(key, ports)
    serviceView[key] = ports
  }
  const applicationTunnel = w.applicationTunnel === null
    ? undefined
    : { protocol: enumName('applicationTunnel', w.applicationTunnel.protocol, 'applicationTunnel.protocol'), port: port(w.applicationTunnel.port, 'applicationTunnel.port', true) }
  const waypoint = gateway(w.waypoint, 'waypoint')
  const networkGateway = gateway(w.networkGateway, 'networkGateway')
  const labels: Record<string, string> = {}
  if (w.canonicalName !== '') labels[CANONICAL_NAME_LABEL] = w.canonicalName
  if (w.canonicalRevision !== '') labels[CANONICAL_REVISION_LABEL] = w.canonicalRevision
  const serviceAccount = w.serviceAccount === '' ? 'default' : w.serviceAccount
  const view: WorkloadView = {
    uid: w.uid,
    name: w.name,
    namespace: w.namespace,
    workloadIps,
    ...(w.hostname === '' ? {} : { hostname: w.hostname }),
    network: w.network,
    protocol,
    trustDomain: w.trustDomain === '' ? 'cluster.local' : w.trustDomain,
    serviceAccount,
    node: w.node,
    ...(waypoint === undefined ? {} : { waypoint }),
    ...(networkGateway === undefined ? {} : { networkGateway }),
    canonicalName: w.canonicalName,
    canonicalRevision: w.canonicalRevision,
    workloadType: enumName('workloadType', w.workloadType, 'workloadType').toLowerCase(),
    workloadName: w.workloadName,
    nativeTunnel: w.nativeTunnel,
    ...(applicationTunnel === undefined ? {} : { applicationTunnel }),
    services: serviceView,
    authorizationPolicies: w.authorizationPolicies,
    status: status === 'HEALTHY' ? 'Healthy' : 'Unhealthy',
    clusterId: w.clusterId === '' ? 'Kubernetes' : w.clusterId,
    ...(w.locality === null ? {} : { locality: { region: w.locality.region, zone: w.locality.zone, subzone: w.locality.subzone } }),
    networkMode,
    capacity: w.capacity === null ? 1 : w.capacity.value,
    ...(extensionNames(w.extensions) === undefined ? {} : { extensions: extensionNames(w.extensions) }),
  }
  const workload: Workload = {
    uid: w.uid,
    // Only shown in logs (ztunnel's "debug only"): the uid stands in for a missing name.
    name: w.name === '' ? w.uid : w.name,
    namespace: w.namespace,
    serviceAccount,
    node: w.node,
    // A host-network workload shares its node's address: like ztunnel, never find it by address.
    addresses: networkMode === 'HOST_NETWORK' ? [] : workloadIps,
    protocol: protocol === 'HBONE' ? 'HBONE' : 'TCP',
    labels,
    ...(w.trustDomain === '' ? {} : { trustDomain: w.trustDomain }),
  }
  return { workload, services, healthy: status === 'HEALTHY', policies: w.authorizationPolicies, view }
}

/** A service as Istio sent it, in the shape of ztunnel's `/config_dump`. */
export interface ServiceView {
  readonly name: string
  readonly namespace: string
  readonly hostname: string
  readonly vips: readonly string[]
  readonly ports: Readonly<Record<number, number>>
  readonly subjectAltNames?: readonly string[]
  readonly waypoint?: GatewayView
  readonly weightedWaypoints?: ReadonlyArray<{ readonly destination: GatewayView; readonly weight: number }>
  readonly loadBalancer?: { readonly routingPreferences: readonly string[]; readonly mode: string; readonly healthPolicy: string }
  readonly ipFamilies: string
  readonly canonical: boolean
  readonly ingressUseWaypoint: boolean
  readonly visibility: string
  readonly extensions?: readonly string[]
}

/** What a WDS Service becomes (its endpoints come from the workloads that name it). */
export interface ConvertedService {
  /** `namespace/hostname`, its xDS resource name. */
  readonly key: string
  /** For core's registry, without endpoints. */
  readonly service: Service
  /** Whether unhealthy endpoints still take traffic (load balancing health policy ALLOW_ALL). */
  readonly includeUnhealthy: boolean
  readonly view: ServiceView
}

/** Converts a WDS Service; `name` is its xDS resource name, which must be `namespace/hostname`. */
export function convertService(s: XdsService, name: string): ConvertedService {
  const key = `${s.namespace}/${s.hostname}`
  if (s.hostname === '') refuse('service without hostname')
  if (name !== key) refuse(`the resource name must be ${JSON.stringify(key)} (namespace/hostname)`)
  const vips: string[] = []
  const vipView = s.addresses.map((a, i) => {
    const text = networkAddressText(a, `addresses[${i}]`)
    // A CIDR VIP (Istio 1.30) covers a range core cannot index: shown, not routed.
    if (a.length === undefined || a.length === null) vips.push(ipFromBytes(a.address, `addresses[${i}]`))
    return text
  })
  const ports: Record<number, number> = {}
  for (const [i, p] of s.ports.entries()) {
    enumName('appProtocol', p.appProtocol, `ports[${i}].appProtocol`)
    ports[port(p.servicePort, `ports[${i}].servicePort`, false)] = port(p.targetPort, `ports[${i}].targetPort`, true)
  }
  const lb = s.loadBalancing
  const loadBalancer = lb === null
    ? undefined
    : {
      routingPreferences: lb.routingPreference.map((r, i) => enumName('loadBalancingScope', r, `loadBalancing.routingPreference[${i}]`)),
      mode: enumName('loadBalancingMode', lb.mode, 'loadBalancing.mode'),
      healthPolicy: enumName('healthPolicy', lb.healthPolicy, 'loadBalancing.healthPolicy'),
    }
  const waypoint = gateway(s.waypoint, 'waypoint')
  const weightedWaypoints = s.weightedWaypoints.map((w, i) => ({
    destination: gateway(w.destination, `weightedWaypoints[${i}].destination`) ?? refuse(`weightedWaypoints[${i}]: no destination`),
    weight: w.weight,
  }))
  let service: Service
  try {
    service = normalizeService({ hostname: s.hostname, namespace: s.namespace, vips, ports, endpoints: [] })
  } catch (err) {
    return refuse((err as Error).message)
  }
  const view: ServiceView = {
    name: s.name,
    namespace: s.namespace,
    hostname: s.hostname,
    vips: vipView,
    ports,
    ...(s.subjectAltNames.length === 0 ? {} : { subjectAltNames: s.subjectAltNames }),
    ...(waypoint === undefined ? {} : { waypoint }),
    ...(weightedWaypoints.length === 0 ? {} : { weightedWaypoints }),
    ...(loadBalancer === undefined ? {} : { loadBalancer }),
    ipFamilies: enumName('ipFamilies', s.ipFamilies, 'ipFamilies'),
    canonical: s.canonical,
    ingressUseWaypoint: s.ingressUseWaypoint,
    visibility: enumName('visibility', s.visibility, 'visibility'),
    ...(extensionNames(s.extensions) === undefined ? {} : { extensions: extensionNames(s.extensions) }),
  }
  return { key, service, includeUnhealthy: loadBalancer?.healthPolicy === 'ALLOW_ALL', view }
}

/** A policy as Istio sent it, in the shape of ztunnel's `/config_dump` (string matches as `{exact: x}` and so on). */
export interface PolicyView {
  readonly name: string
  readonly namespace: string
  readonly scope: string
  readonly action: string
  readonly dryRun: boolean
  readonly rules: ReadonlyArray<ReadonlyArray<ReadonlyArray<Record<string, unknown>>>>
  readonly extensions?: readonly string[]
}

/** What a WDS Authorization becomes. */
export interface ConvertedPolicy {
  /** `namespace/name`, its xDS resource name. */
  readonly key: string
  /** Scope WORKLOAD_SELECTOR: applies to the workloads that list it (core's `workloads`, filled by the caller). */
  readonly selected: boolean
  /** Core's policy (unvalidated input for `loadAuthorizationPolicy`), without `workloads`; undefined for a dry-run policy, which is never enforced. */
  readonly policy: Record<string, unknown> | undefined
  readonly view: PolicyView
}

/** Converts a WDS Authorization; `name` is its xDS resource name, which must be `namespace/name`. */
export function convertAuthorization(a: XdsAuthorization, name: string): ConvertedPolicy {
  const key = `${a.namespace}/${a.name}`
  if (a.name === '' || a.namespace === '') refuse('a policy needs a name and a namespace')
  if (name !== key) refuse(`the resource name must be ${JSON.stringify(key)} (namespace/name)`)
  const scope = enumName('scope', a.scope, 'scope')
  const action = enumName('action', a.action, 'action')
  const rules: AuthorizationMatch[][][] = []
  const ruleViews = a.rules.map((rule, r) => {
    const clauses: AuthorizationMatch[][] = []
    let never = false
    const clauseViews = rule.clauses.map((clause, c) => {
      const matches: AuthorizationMatch[] = []
      const views = clause.matches.map((m, i) => {
        const converted = convertMatch(m, `rules[${r}].clauses[${c}].matches[${i}]`)
        if (converted !== undefined) matches.push(converted)
        return matchView(m)
      })
      // ztunnel: an empty clause matches; a clause whose matches are all empty never does.
      if (clause.matches.length > 0 && matches.length === 0) never = true
      if (matches.length > 0) clauses.push(matches)
      return views
    })
    // A rule with a clause that never matches never matches: leaving it out is the same.
    if (!never) rules.push(clauses.length === 0 ? [[{}]] : clauses)
    return clauseViews
  })
  const view: PolicyView = {
    name: a.name,
    namespace: a.namespace,
    scope: scope === 'GLOBAL' ? 'Global' : scope === 'NAMESPACE' ? 'Namespace' : 'WorkloadSelector',
    action: action === 'ALLOW' ? 'Allow' : 'Deny',
    dryRun: a.dryRun,
    rules: ruleViews,
    ...(extensionNames(a.extensions) === undefined ? {} : { extensions: extensionNames(a.extensions) }),
  }
  const policy = a.dryRun
    ? undefined
    : { name: a.name, namespace: a.namespace, scope: scope === 'GLOBAL' ? 'global' : scope === 'NAMESPACE' ? 'namespace' : 'workload', action, rules }
  return { key, selected: scope === 'WORKLOAD_SELECTOR', policy, view }
}

// A value core's patterns cannot express (a "*" inside, an empty string) is refused rather than approximated.
function stringPattern(m: XdsStringMatch, field: string): string {
  const check = (value: string): string => {
    if (value === '') refuse(`${field}: an empty string match is not supported`)
    if (value.includes('*')) refuse(`${field}: "*" inside a string match is not supported`)
    return value
  }
  switch (m.matchType) {
    case 'exact':
      return check(m.exact!)
    case 'prefix':
      return `${check(m.prefix!)}*`
    case 'suffix':
      return `*${check(m.suffix!)}`
    case 'presence':
      return '*'
    default:
      return refuse(`${field}: a string match without exact, prefix, suffix or presence`)
  }
}

const NAME = /^[a-zA-Z0-9._-]+$/

/** One Istio Match as core's; undefined when it sets nothing (ztunnel skips such a match). */
function convertMatch(m: XdsMatch, at: string): AuthorizationMatch | undefined {
  const out: Record<string, unknown> = {}
  const strings = (field: 'namespaces' | 'notNamespaces' | 'principals' | 'notPrincipals'): void => {
    if (m[field].length > 0) out[field] = m[field].map((s, i) => stringPattern(s, `${at}.${field}[${i}]`))
  }
  const accounts = (field: 'serviceAccounts' | 'notServiceAccounts'): void => {
    if (m[field].length === 0) return
    out[field] = m[field].map((sa, i) => {
      if (!NAME.test(sa.namespace) || !NAME.test(sa.serviceAccount)) refuse(`${at}.${field}[${i}]: expected a namespace and a service account name`)
      return `${sa.namespace}/${sa.serviceAccount}`
    })
  }
  const cidrs = (field: 'sourceIps' | 'notSourceIps' | 'destinationIps' | 'notDestinationIps'): void => {
    if (m[field].length > 0) out[field] = m[field].map((c, i) => cidrFromBytes(c, `${at}.${field}[${i}]`))
  }
  const ports = (field: 'destinationPorts' | 'notDestinationPorts'): void => {
    if (m[field].length > 0) out[field] = m[field].map((p, i) => port(p, `${at}.${field}[${i}]`, false))
  }
  strings('namespaces')
  strings('notNamespaces')
  strings('principals')
  strings('notPrincipals')
  accounts('serviceAccounts')
  accounts('notServiceAccounts')
  cidrs('sourceIps')
  cidrs('notSourceIps')
  cidrs('destinationIps')
  cidrs('notDestinationIps')
  ports('destinationPorts')
  ports('notDestinationPorts')
  return Object.keys(out).length === 0 ? undefined : (out as AuthorizationMatch)
}

function matchView(m: XdsMatch): Record<string, unknown> {
  const view: Record<string, unknown> = {}
  const text = (s: XdsStringMatch): Record<string, unknown> => (s.matchType === undefined ? {} : s.matchType === 'presence' ? { presence: {} } : { [s.matchType]: s[s.matchType] })
  const cidr = (c: XdsCidr): string => (c.address.length === 4 || c.address.length === 16 ? `${ipFromBytes(c.address, 'address')}/${c.length}` : `<${c.address.length} bytes>/${c.length}`)
  for (const [field, value] of Object.entries(m) as Array<[keyof XdsMatch, unknown[]]>) {
    if (!Array.isArray(value) || value.length === 0) continue
    if (field.endsWith('amespaces') || field.endsWith('rincipals')) view[field] = (value as XdsStringMatch[]).map(text)
    else if (field.endsWith('Ips')) view[field] = (value as XdsCidr[]).map(cidr)
    else if (field === 'extensions') view[field] = (value as XdsExtension[]).map((e) => e.name)
    else view[field] = value
  }
  return view
}
