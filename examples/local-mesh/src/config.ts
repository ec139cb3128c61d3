import { readFileSync } from 'node:fs'
import {
  AmbientError,
  DEFAULT_TRUST_DOMAIN,
  describeValue,
  loadAuthorizationPolicy,
  normalizeService,
  normalizeWorkload,
  type AuthorizationPolicy,
  type Service,
  type Workload,
} from '@ambientkit/core'
import { resolveCaptureConfig, type CaptureConfig } from '@ambientkit/redirect'
import { parseDocument } from 'yaml'

/** Error code of a mesh.yaml that does not validate. */
export const INVALID_MESH_CONFIG = 'ERR_AMBIENT_LOCAL_MESH_CONFIG'

/** A node of the local mesh: a network namespace routing its pod subnet. */
export interface NodeConfig {
  readonly name: string
  /** IPv4 pod subnet, a /24 (`10.44.1.0/24`); the node's bridge takes `.1`. */
  readonly podCidr: string
  /** The bridge (gateway) address, `.1` of `podCidr`. */
  readonly gateway: string
  /** 1-based position in the file (interface names and link addresses derive from it). */
  readonly index: number
}

/** A pod: a network namespace with an echo app, in the mesh or not. */
export interface PodConfig {
  readonly name: string
  readonly namespace: string
  readonly serviceAccount: string
  readonly node: string
  /** IPv4 address inside its node's `podCidr`. */
  readonly ip: string
  readonly labels: Readonly<Record<string, string>>
  /** `true`: captured by the mesh (HBONE); `false`: a plain TCP workload. */
  readonly mesh: boolean
  /** Port of the echo app. */
  readonly port: number
}

/** A service: a virtual IP in front of the pods its selector picks. */
export interface ServiceConfig {
  readonly name: string
  readonly namespace: string
  readonly vip: string
  /** Service port → target port. */
  readonly ports: Readonly<Record<number, number>>
  readonly selector: Readonly<Record<string, string>>
}

/** A validated mesh.yaml. */
export interface MeshConfig {
  readonly trustDomain: string
  /** Lifetime of the SVIDs the control plane signs, seconds. */
  readonly svidTtlSeconds: number
  readonly nodes: readonly NodeConfig[]
  readonly pods: readonly PodConfig[]
  readonly services: readonly ServiceConfig[]
  readonly policies: readonly AuthorizationPolicy[]
  /** How every mesh pod's traffic is captured (`@ambientkit/redirect`'s options); default Istio's. */
  readonly capture: CaptureConfig
  /** Settings every node proxy shares. */
  readonly proxy: {
    readonly outboundPolicy: 'passthrough' | 'refuse'
    readonly inboundPlaintext: 'permissive' | 'strict'
    readonly preserveSourceAddress: boolean
    /** What carries HBONE tunnels; absent: the proxy's default (native when its addon is built). */
    readonly dataPath?: 'native' | 'node'
  }
}

function fail(path: string, value: unknown, expected: string): never {
  throw new AmbientError(INVALID_MESH_CONFIG, `mesh config ${path}: expected ${expected}, got ${describeValue(value)}`, {
    details: { name: path, value },
  })
}

function object(path: string, value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(path, value, 'a mapping')
  return value as Record<string, unknown>
}

function only(path: string, obj: Record<string, unknown>, known: readonly string[]): void {
  for (const key of Object.keys(obj)) if (!known.includes(key)) fail(`${path}.${key}`, obj[key], `no such field (known: ${known.join(', ')})`)
}

const NAME = /^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/

function name(path: string, value: unknown): string {
  if (typeof value !== 'string' || !NAME.test(value)) fail(path, value, 'a name of lowercase letters, digits and "-" (at most 32)')
  return value
}

function strings(path: string, value: unknown): Record<string, string> {
  if (value === undefined) return {}
  const obj = object(path, value)
  for (const [k, v] of Object.entries(obj)) if (typeof v !== 'string') fail(`${path}.${k}`, v, 'a string')
  return { ...(obj as Record<string, string>) }
}

function ipv4(path: string, value: unknown): number {
  const parts = typeof value === 'string' ? value.split('.') : []
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255)) fail(path, value, 'an IPv4 address like 10.44.1.2')
  return parts.reduce((n, p) => n * 256 + Number(p), 0)
}

function formatIpv4(n: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join('.')
}

function port(path: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) fail(path, value, 'a port 1-65535')
  return value
}

/** The subnet every address of the demo lives in; chosen apart from the test suite's 10.200/10.254. */
export const MESH_SUPERNET = '10.44.0.0/16'

function inSupernet(path: string, n: number, value: unknown): void {
  if (Math.floor(n / 65536) !== 10 * 256 + 44) fail(path, value, `an address inside ${MESH_SUPERNET} (the demo only touches that range)`)
}

/** The link between nodes i and j (i < j) uses 10.44.255.0/24-style addresses: see topology. */
const RESERVED_THIRD_OCTETS = new Set([100, 255])

/**
 * Validates a parsed mesh.yaml. Errors (`ERR_AMBIENT_LOCAL_MESH_CONFIG`)
 * name the field, e.g. `pods[2].node: expected one of node-1, node-2, got "node-3"`.
 */
export function validateMeshConfig(input: unknown): MeshConfig {
  const root = object('(top level)', input)
  only('', root, ['trustDomain', 'svidTtlSeconds', 'nodes', 'pods', 'services', 'policies', 'proxy', 'capture'])
  const trustDomain = root.trustDomain ?? DEFAULT_TRUST_DOMAIN
  // SPIFFE-ID §2.1, §2.3: every identity of the mesh is built on it.
  if (typeof trustDomain !== 'string' || !/^[a-z0-9._-]{1,255}$/.test(trustDomain)) fail('trustDomain', trustDomain, 'a trust domain of [a-z0-9._-], at most 255 characters')
  const svidTtlSeconds = root.svidTtlSeconds ?? 3600
  if (typeof svidTtlSeconds !== 'number' || !Number.isInteger(svidTtlSeconds) || svidTtlSeconds < 10) fail('svidTtlSeconds', svidTtlSeconds, 'an integer number of seconds >= 10')

  if (!Array.isArray(root.nodes) || root.nodes.length === 0) fail('nodes', root.nodes, 'a non-empty list of nodes')
  if (root.nodes.length > 9) fail('nodes', root.nodes, 'at most 9 nodes')
  const nodes: NodeConfig[] = (root.nodes as unknown[]).map((raw, i) => {
    const at = `nodes[${i}]`
    const n = object(at, raw)
    only(at, n, ['name', 'podCidr'])
    const cidr = n.podCidr
    const match = typeof cidr === 'string' ? /^(.+)\/24$/.exec(cidr) : null
    if (match === null) fail(`${at}.podCidr`, cidr, 'an IPv4 /24 like 10.44.1.0/24')
    const base = ipv4(`${at}.podCidr`, match[1])
    if (base % 256 !== 0) fail(`${at}.podCidr`, cidr, 'a /24 whose host part is zero (x.y.z.0/24)')
    inSupernet(`${at}.podCidr`, base, cidr)
    if (RESERVED_THIRD_OCTETS.has(Math.floor(base / 256) % 256)) fail(`${at}.podCidr`, cidr, 'a subnet other than 10.44.100.0/24 (service VIPs) and 10.44.255.0/24 (node links)')
    return { name: name(`${at}.name`, n.name), podCidr: cidr as string, gateway: formatIpv4(base + 1), index: i + 1 }
  })
  unique('nodes', nodes.map((n) => n.name), 'name')
  unique('nodes', nodes.map((n) => n.podCidr), 'podCidr')

  if (!Array.isArray(root.pods) || root.pods.length === 0) fail('pods', root.pods, 'a non-empty list of pods')
  const pods = (root.pods as unknown[]).map((raw, i) => validatePod(`pods[${i}]`, raw, nodes))
  unique('pods', pods.map((p) => `${p.namespace}/${p.name}`), 'namespace/name')
  unique('pods', pods.map((p) => p.ip), 'ip')

  const servicesInput = root.services ?? []
  if (!Array.isArray(servicesInput)) fail('services', servicesInput, 'a list of services')
  const services: ServiceConfig[] = servicesInput.map((raw: unknown, i) => {
    const at = `services[${i}]`
    const s = object(at, raw)
    only(at, s, ['name', 'namespace', 'vip', 'ports', 'selector'])
    const vip = ipv4(`${at}.vip`, s.vip)
    inSupernet(`${at}.vip`, vip, s.vip)
    if (Math.floor(vip / 256) % 256 !== 100) fail(`${at}.vip`, s.vip, 'a VIP in 10.44.100.0/24')
    const ports: Record<number, number> = {}
    for (const [p, target] of Object.entries(object(`${at}.ports`, s.ports))) ports[port(`${at}.ports key`, Number(p))] = port(`${at}.ports.${p}`, target)
    if (Object.keys(ports).length === 0) fail(`${at}.ports`, s.ports, 'at least one "port: targetPort" entry')
    const selector = strings(`${at}.selector`, s.selector)
    if (Object.keys(selector).length === 0) fail(`${at}.selector`, s.selector, 'at least one label')
    return { name: name(`${at}.name`, s.name), namespace: name(`${at}.namespace`, s.namespace), vip: s.vip as string, ports, selector }
  })
  unique('services', services.map((s) => s.vip), 'vip')

  const policies = validatePolicies('policies', root.policies ?? [])

  const proxyInput = object('proxy', root.proxy ?? {})
  only('proxy', proxyInput, ['outboundPolicy', 'inboundPlaintext', 'preserveSourceAddress', 'dataPath'])
  const outboundPolicy = proxyInput.outboundPolicy ?? 'passthrough'
  if (outboundPolicy !== 'passthrough' && outboundPolicy !== 'refuse') fail('proxy.outboundPolicy', outboundPolicy, '"passthrough" or "refuse"')
  const inboundPlaintext = proxyInput.inboundPlaintext ?? 'permissive'
  if (inboundPlaintext !== 'permissive' && inboundPlaintext !== 'strict') fail('proxy.inboundPlaintext', inboundPlaintext, '"permissive" or "strict"')
  const preserveSourceAddress = proxyInput.preserveSourceAddress ?? false
  if (typeof preserveSourceAddress !== 'boolean') fail('proxy.preserveSourceAddress', preserveSourceAddress, 'true or false')
  const dataPath = proxyInput.dataPath
  if (dataPath !== undefined && dataPath !== 'native' && dataPath !== 'node') fail('proxy.dataPath', dataPath, '"native" or "node"')

  const capture = object('capture', root.capture ?? {}) as CaptureConfig
  try {
    resolveCaptureConfig(capture)
  } catch (err) {
    throw new AmbientError(INVALID_MESH_CONFIG, `mesh config capture: ${(err as Error).message}`, { cause: err })
  }

  const proxy: MeshConfig['proxy'] = { outboundPolicy, inboundPlaintext, preserveSourceAddress, ...(dataPath === undefined ? {} : { dataPath }) }
  return { trustDomain, svidTtlSeconds, nodes, pods, services, policies, capture, proxy }
}

function unique(path: string, values: readonly string[], what: string): void {
  const seen = new Set<string>()
  values.forEach((v, i) => {
    if (seen.has(v)) fail(`${path}[${i}].${what}`, v, `a ${what} no other entry has`)
    seen.add(v)
  })
}

/** Validates one pod (from mesh.yaml or from `PUT /v1/pods/:uid`). */
export function validatePod(at: string, raw: unknown, nodes: readonly NodeConfig[]): PodConfig {
  const p = object(at, raw)
  only(at, p, ['name', 'namespace', 'serviceAccount', 'node', 'ip', 'labels', 'mesh', 'port'])
  const node = nodes.find((n) => n.name === p.node)
  if (node === undefined) fail(`${at}.node`, p.node, `one of ${nodes.map((n) => n.name).join(', ')}`)
  const ip = ipv4(`${at}.ip`, p.ip)
  const subnet = ipv4(`${at}.ip`, node.podCidr.split('/')[0])
  const host = ip - subnet
  if (host < 2 || host > 254) fail(`${at}.ip`, p.ip, `an address in ${node.podCidr} from .2 to .254 (node ${node.name}'s pod subnet)`)
  const mesh = p.mesh ?? true
  if (typeof mesh !== 'boolean') fail(`${at}.mesh`, mesh, 'true (captured by the mesh) or false (plain TCP)')
  const n = name(`${at}.name`, p.name)
  return {
    name: n,
    namespace: name(`${at}.namespace`, p.namespace),
    serviceAccount: p.serviceAccount === undefined ? 'default' : name(`${at}.serviceAccount`, p.serviceAccount),
    node: node.name,
    ip: p.ip as string,
    labels: { app: n, ...strings(`${at}.labels`, p.labels) },
    mesh,
    port: p.port === undefined ? 8080 : port(`${at}.port`, p.port),
  }
}

/**
 * Validates a policy: core's model, with one shorthand for YAML: a rule may
 * be a single match object (meaning one clause with that one match) instead
 * of a list of clauses.
 */
export function validatePolicy(at: string, raw: unknown): AuthorizationPolicy {
  const p = object(at, raw)
  const rules = Array.isArray(p.rules) ? p.rules.map((rule: unknown) => (typeof rule === 'object' && rule !== null && !Array.isArray(rule) ? [[rule]] : rule)) : p.rules
  try {
    return loadAuthorizationPolicy({ ...p, rules })
  } catch (err) {
    throw new AmbientError(INVALID_MESH_CONFIG, `mesh config ${at}: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * Validates a list of policies as mesh.yaml's `policies` (and the policy
 * API, `PUT /v1/policies`): each one, and no two with the same namespace/name.
 */
export function validatePolicies(at: string, raw: unknown): AuthorizationPolicy[] {
  if (!Array.isArray(raw)) fail(at, raw, 'a list of authorization policies')
  const policies = raw.map((p: unknown, i) => validatePolicy(`${at}[${i}]`, p))
  unique(at, policies.map((p) => `${p.namespace}/${p.name}`), 'namespace/name')
  return policies
}

/** Reads and validates a mesh.yaml file. YAML syntax errors name the line. */
export function loadMeshConfig(file: string): MeshConfig {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new AmbientError(INVALID_MESH_CONFIG, `cannot read mesh config ${file}: ${(err as Error).message}`, { cause: err })
  }
  const doc = parseDocument(text, { prettyErrors: true })
  if (doc.errors.length > 0) throw new AmbientError(INVALID_MESH_CONFIG, `mesh config ${file} is not valid YAML: ${doc.errors[0]!.message}`)
  let input: unknown
  try {
    input = doc.toJS()
  } catch (err) {
    // The yaml library refuses to expand an alias bomb (and other documents it cannot build) by throwing.
    throw new AmbientError(INVALID_MESH_CONFIG, `mesh config ${file} cannot be read: ${(err as Error).message}`, { cause: err })
  }
  try {
    return validateMeshConfig(input)
  } catch (err) {
    if (err instanceof AmbientError) throw new AmbientError(err.code, `${file}: ${err.message}`, { cause: err.cause, details: err.details })
    throw err
  }
}

/** The UID of a pod: `<namespace>.<name>` (stable, URL-safe). */
export function podUid(pod: Pick<PodConfig, 'namespace' | 'name'>): string {
  return `${pod.namespace}.${pod.name}`
}

/** The workload the registry holds for a pod. */
export function podWorkload(pod: PodConfig, trustDomain: string): Workload {
  return normalizeWorkload({
    uid: podUid(pod),
    name: pod.name,
    namespace: pod.namespace,
    serviceAccount: pod.serviceAccount,
    node: pod.node,
    addresses: [pod.ip],
    protocol: pod.mesh ? 'HBONE' : 'TCP',
    labels: pod.labels,
    trustDomain,
  })
}

/** The registry's service for a service of mesh.yaml, with endpoints chosen by selector. */
export function serviceEntry(service: ServiceConfig, pods: readonly PodConfig[], trustDomain: string): Service {
  const endpoints = pods
    .filter((p) => p.namespace === service.namespace && Object.entries(service.selector).every(([k, v]) => p.labels[k] === v))
    .map(podUid)
  return normalizeService({
    hostname: `${service.name}.${service.namespace}.svc.${trustDomain}`,
    namespace: service.namespace,
    vips: [service.vip],
    ports: service.ports,
    endpoints,
  })
}
