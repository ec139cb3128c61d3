import { AmbientError, CoreErrorCode, describeValue, parseSocketAddress, type SocketAddress } from '@ambientkit/core'
import { TrustDomain } from '@ambientkit/identity'
import { parse } from 'yaml'

/** The node agent's settings: `mesh.yaml` from the ConfigMap plus the environment. */
export interface NodeConfig {
  readonly nodeName: string
  readonly trustDomain: string
  readonly svidTtlSeconds: number
  readonly outboundPolicy: 'passthrough' | 'refuse'
  readonly inboundPlaintext: 'permissive' | 'strict'
  /** Connect pods of this node to each other in-process instead of through HBONE (`createNodeProxy`'s `sameNodeFastPath`). */
  readonly sameNodeFastPath: boolean
  /** Where the authorization policies are (a YAML list in `@ambientkit/core`'s form), if anywhere. */
  readonly policiesFile?: string
  /**
   * The CA service (the control-plane Deployment, or istiod): `host:port`.
   * The node agent proves its pods' identities with its projected
   * service-account token; it never holds the CA's key.
   */
  readonly caAddress: string
  /** Readiness, `/metrics` and `/config_dump`. */
  readonly adminAddress: SocketAddress
  /** A second listener for `/metrics` only (Prometheus annotations point at it). */
  readonly metricsAddress?: SocketAddress
  readonly stateFile: string
}

const MESH_KEYS = new Set(['trustDomain', 'svidTtlSeconds', 'proxy', 'policiesFile', 'caAddress'])
const PROXY_KEYS = new Set(['outboundPolicy', 'inboundPlaintext', 'sameNodeFastPath'])

function fail(name: string, value: unknown, expected: string): never {
  throw new AmbientError(CoreErrorCode.InvalidArgument, `${name}: expected ${expected}, got ${describeValue(value)}`, { details: { name, value } })
}

/**
 * Reads the node agent's configuration. Every unknown key and bad value is
 * an error naming it: a typo in a mesh setting must not silently fall back
 * to a default.
 */
export function loadNodeConfig(meshYaml: string, env: NodeJS.ProcessEnv): NodeConfig {
  const doc: unknown = parse(meshYaml) ?? {}
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) fail('mesh.yaml', doc, 'a mapping')
  const mesh = doc as Record<string, unknown>
  for (const key of Object.keys(mesh)) if (!MESH_KEYS.has(key)) fail(`mesh.yaml: ${key}`, mesh[key], `no such key (known: ${[...MESH_KEYS].join(', ')})`)
  const proxy = (mesh.proxy ?? {}) as Record<string, unknown>
  if (typeof proxy !== 'object' || Array.isArray(proxy)) fail('mesh.yaml: proxy', proxy, 'a mapping')
  for (const key of Object.keys(proxy)) if (!PROXY_KEYS.has(key)) fail(`mesh.yaml: proxy.${key}`, proxy[key], `no such key (known: ${[...PROXY_KEYS].join(', ')})`)
  const nodeName = env.NODE_NAME
  if (nodeName === undefined || nodeName === '') fail('NODE_NAME', nodeName, 'the node name (the downward API field spec.nodeName)')
  const trustDomain = mesh.trustDomain ?? 'cluster.local'
  if (typeof trustDomain !== 'string' || !isTrustDomain(trustDomain)) fail('mesh.yaml: trustDomain', trustDomain, 'a trust domain of [a-z0-9._-], at most 255 characters (SPIFFE-ID §2.3)')
  const ttl = mesh.svidTtlSeconds ?? 3600
  if (typeof ttl !== 'number' || !Number.isInteger(ttl) || ttl < 60) fail('mesh.yaml: svidTtlSeconds', ttl, 'an integer number of seconds, at least 60')
  const outboundPolicy = proxy.outboundPolicy ?? 'passthrough'
  if (outboundPolicy !== 'passthrough' && outboundPolicy !== 'refuse') fail('mesh.yaml: proxy.outboundPolicy', outboundPolicy, '"passthrough" or "refuse"')
  const inboundPlaintext = proxy.inboundPlaintext ?? 'permissive'
  if (inboundPlaintext !== 'permissive' && inboundPlaintext !== 'strict') fail('mesh.yaml: proxy.inboundPlaintext', inboundPlaintext, '"permissive" or "strict"')
  const sameNodeFastPath = proxy.sameNodeFastPath ?? false
  if (typeof sameNodeFastPath !== 'boolean') fail('mesh.yaml: proxy.sameNodeFastPath', sameNodeFastPath, 'true or false')
  if (mesh.policiesFile !== undefined && typeof mesh.policiesFile !== 'string') fail('mesh.yaml: policiesFile', mesh.policiesFile, 'a path')
  const caAddress = mesh.caAddress ?? 'ambientkit-control-plane.ambientkit-system.svc:15012'
  if (typeof caAddress !== 'string' || !/^[^\s:/]+:\d{1,5}$/.test(caAddress)) fail('mesh.yaml: caAddress', caAddress, 'host:port of the CA service')
  return {
    nodeName,
    trustDomain,
    svidTtlSeconds: ttl,
    outboundPolicy,
    inboundPlaintext,
    sameNodeFastPath,
    ...(mesh.policiesFile === undefined ? {} : { policiesFile: mesh.policiesFile as string }),
    caAddress,
    adminAddress: parseSocketAddress(env.ADMIN_ADDRESS ?? '127.0.0.1:15021', 'ADMIN_ADDRESS'),
    ...(env.METRICS_ADDRESS ? { metricsAddress: parseSocketAddress(env.METRICS_ADDRESS, 'METRICS_ADDRESS') } : {}),
    stateFile: env.STATE_FILE ?? '/var/run/ambientkit/agent.json',
  }
}

/** Whether `value` is a trust domain as the SPIFFE ID spec has it (§2.1, §2.3). */
function isTrustDomain(value: string): boolean {
  try {
    TrustDomain.parse(value)
    return true
  } catch {
    return false
  }
}
