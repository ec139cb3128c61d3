import {
  evaluateAuthorization,
  formatSocketAddress,
  workloadIdentity,
  type AuthorizationConnection,
  type AuthorizationPolicy,
  type SocketAddress,
  type Workload,
  type WorkloadRegistry,
} from '@ambientkit/core'
import type { WorkloadProxyPorts } from './ports'

/**
 * The decisions of a workload proxy, as pure functions of what it knows:
 * the original destination of a connection, its workload, the registry and
 * the policies. No socket is involved, so every branch of the data path is
 * unit-tested without root (packages/proxy/test/route.test.ts), as
 * ztunnel's `build_request` is.
 */

/** Where an outbound connection goes, as {@link routeOutbound} decides. */
export type OutboundRoute =
  /** Refused before anything is connected (a loop into the proxy, or outside the mesh with passthrough off). */
  | { readonly kind: 'refuse'; readonly reason: string; readonly destination: SocketAddress }
  /** Plain TCP to the destination (outside the mesh). */
  | {
      readonly kind: 'passthrough'
      readonly destination: SocketAddress
      /** The workload at the destination, when the registry knows it (not in the mesh). */
      readonly target?: Workload
      /** The service's host name, when the app connected to a VIP. */
      readonly service?: string
      readonly serviceNamespace?: string
    }
  /** Through an HBONE tunnel to a mesh workload: `destination` is the workload's address and port (a service VIP resolved). */
  | {
      readonly kind: 'tunnel'
      readonly destination: SocketAddress
      readonly target: Workload
      /** The SPIFFE ID the destination's proxy must present. */
      readonly expectedIdentity: string
      /** The source address the session binds to: the workload's own address of the destination's family. */
      readonly sourceAddress?: string
      /** The service's host name, when the app connected to a VIP. */
      readonly service?: string
      readonly serviceNamespace?: string
    }

/** What {@link routeOutbound} and {@link authorizeInbound} know of the workload whose proxy asks. */
export interface RouteContext {
  readonly workload: Workload
  readonly registry: WorkloadRegistry
  readonly ports: WorkloadProxyPorts
  /** Outbound to a destination outside the mesh: `'passthrough'` or `'refuse'`. */
  readonly outboundPolicy: 'passthrough' | 'refuse'
}

/** Decides where an outbound connection to `destination` (its original destination) goes. */
export function routeOutbound(destination: SocketAddress, context: RouteContext): OutboundRoute {
  if (isOwnListener(destination, context)) {
    return { kind: 'refuse', reason: `destination ${formatSocketAddress(destination)} is the proxy itself (loop)`, destination }
  }
  const resolved = context.registry.resolve(destination.address, destination.port)
  const service = resolved?.kind === 'service' ? { service: resolved.service.hostname, serviceNamespace: resolved.service.namespace } : {}
  const target = resolved?.workload
  const address = resolved?.address ?? destination.address
  const resolvedDestination: SocketAddress = { address, port: resolved?.port ?? destination.port, family: address.includes(':') ? 6 : 4 }
  if (target?.protocol === 'HBONE') {
    const source = context.workload.addresses.find((own) => own.includes(':') === (resolvedDestination.family === 6))
    return {
      kind: 'tunnel',
      destination: resolvedDestination,
      target,
      expectedIdentity: workloadIdentity(target),
      ...(source === undefined ? {} : { sourceAddress: source }),
      ...service,
    }
  }
  if (context.outboundPolicy === 'refuse') {
    return { kind: 'refuse', reason: 'destination is not in the mesh and passthrough is off', destination: resolvedDestination }
  }
  return { kind: 'passthrough', destination: resolvedDestination, ...(target === undefined ? {} : { target }), ...service }
}

/** What {@link authorizeInbound} decided about a connection into the workload. */
export type InboundDecision =
  | {
      readonly allowed: true
      /** What authorization saw: kept so that a policy change can re-evaluate the live connection. */
      readonly connection: AuthorizationConnection
      /** `namespace/name` of the policy that allowed it, when one did. */
      readonly policy?: string
    }
  | {
      readonly allowed: false
      /** `refused`: not this workload's to serve; `denied`: by authorization. */
      readonly outcome: 'refused' | 'denied'
      readonly reason: string
      readonly policy?: string
    }

/** Who is connecting: the TCP peer, and its SPIFFE ID when it came over mTLS (or in-process, vouched for). */
export interface InboundSource {
  readonly address: string
  readonly identity?: string
}

/**
 * Decides a connection from `source` to `destination` arriving at the
 * workload: over HBONE (`source.identity` set) or in plaintext
 * (`plaintext: 'strict'` denies every plaintext connection; `'permissive'`
 * authorizes it with no identity).
 */
export function authorizeInbound(
  destination: SocketAddress,
  source: InboundSource,
  context: Pick<RouteContext, 'workload' | 'ports'> & { readonly policies: readonly AuthorizationPolicy[]; readonly plaintext: 'permissive' | 'strict' },
): InboundDecision {
  const { workload } = context
  if (isOwnListener(destination, context)) {
    return { allowed: false, outcome: 'refused', reason: `destination ${formatSocketAddress(destination)} is the proxy itself (loop)` }
  }
  if (!workload.addresses.includes(destination.address)) {
    return { allowed: false, outcome: 'refused', reason: `${destination.address} is not an address of ${workload.namespace}/${workload.name}` }
  }
  if (source.identity === undefined && context.plaintext === 'strict') {
    return { allowed: false, outcome: 'denied', reason: 'plaintext refused (strict mode)' }
  }
  const connection: AuthorizationConnection = {
    sourceIp: source.address,
    ...(source.identity === undefined ? {} : { sourceIdentity: source.identity }),
    destinationIp: destination.address,
    destinationPort: destination.port,
    destination: workload,
  }
  const decision = evaluateAuthorization(context.policies, connection)
  const policy = decision.policy === undefined ? {} : { policy: `${decision.policy.namespace}/${decision.policy.name}` }
  if (!decision.allowed) return { allowed: false, outcome: 'denied', reason: decision.reason, ...policy }
  return { allowed: true, connection, ...policy }
}

/**
 * Whether `destination` is one of the proxy's own listeners: only the pod
 * itself reaches them unredirected, and passing such a connection on would loop.
 */
export function isOwnListener(destination: SocketAddress, context: Pick<RouteContext, 'workload' | 'ports'>): boolean {
  const { ports, workload } = context
  if (destination.port !== ports.outbound && destination.port !== ports.inboundPlaintext && destination.port !== ports.inbound) return false
  return destination.address === '127.0.0.1' || destination.address === '::1' || workload.addresses.includes(destination.address)
}
