import type { V1EndpointSlice, V1Service } from '@kubernetes/client-node'
import { isAmbientError, normalizeService, type Service } from '@ambientkit/core'

/** The label the EndpointSlice controller puts on each slice: the name of its service. */
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name'

/** Why {@link serviceFromKubernetes} gave no service. */
export type ServiceSkipReason =
  /** `type: ExternalName`: a DNS alias, no virtual IP to capture. */
  | 'external-name'
  /** `clusterIP: None`: clients reach the pods directly, which the registry already knows. */
  | 'headless'
  /** The object lacks what a service needs, or holds an invalid value. */
  | 'invalid'

/** The outcome of {@link serviceFromKubernetes}. */
export type ServiceDecision =
  | { readonly include: true; readonly service: Service }
  | { readonly include: false; readonly reason: ServiceSkipReason; readonly message: string }

/** Options of {@link serviceFromKubernetes}. */
export interface ServiceFromKubernetesOptions {
  /** The cluster's DNS domain, for `name.namespace.svc.<domain>`. Default `cluster.local`. */
  clusterDomain?: string
}

/**
 * Maps a Kubernetes Service and its EndpointSlices to core's {@link Service}:
 * every cluster IP (both families of a dual-stack service) as a VIP, each TCP
 * port to its target port number, and the UIDs of the ready pods behind it.
 *
 * A named `targetPort` is resolved through the slices' ports, which carry
 * the number the EndpointSlice controller found in the pods; a port whose
 * name no slice resolves yet (no endpoints) is left out. UDP and SCTP ports
 * are left out: the mesh carries TCP. Slices of other services are ignored,
 * so all slices of a namespace may be passed.
 */
export function serviceFromKubernetes(service: V1Service, slices: readonly V1EndpointSlice[], options: ServiceFromKubernetesOptions = {}): ServiceDecision {
  const name = service.metadata?.name
  const namespace = service.metadata?.namespace
  const what = `service ${namespace ?? '?'}/${name ?? '?'}`
  const skip = (reason: ServiceSkipReason, why: string): ServiceDecision => ({ include: false, reason, message: `${what}: ${why}` })
  if (service.spec?.type === 'ExternalName') return skip('external-name', `is an ExternalName alias of ${JSON.stringify(service.spec.externalName ?? '')}`)
  const ips = service.spec?.clusterIPs ?? (service.spec?.clusterIP === undefined ? [] : [service.spec.clusterIP])
  const vips = ips.filter((ip) => ip !== 'None' && ip !== '')
  if (vips.length === 0) return skip('headless', 'has no cluster IP (headless)')
  const own = slices.filter((s) => s.metadata?.namespace === namespace && s.metadata?.labels?.[SERVICE_NAME_LABEL] === name)
  const ports: Record<number, number> = {}
  for (const port of service.spec?.ports ?? []) {
    if ((port.protocol ?? 'TCP') !== 'TCP') continue
    const target = port.targetPort
    if (target === undefined) ports[port.port] = port.port
    else if (typeof target === 'number' || /^\d+$/.test(target)) ports[port.port] = Number(target)
    else {
      // The slice port of a service port has the service port's name and the number the pods use.
      const resolved = own.flatMap((s) => s.ports ?? []).find((p) => (p.name ?? '') === (port.name ?? '') && typeof p.port === 'number')
      if (resolved !== undefined) ports[port.port] = resolved.port!
    }
  }
  const endpoints: string[] = []
  for (const slice of own) {
    for (const endpoint of slice.endpoints) {
      // `ready` unset means ready (discovery.k8s.io/v1 EndpointConditions).
      if (endpoint.conditions?.ready === false) continue
      const uid = endpoint.targetRef?.kind === 'Pod' ? endpoint.targetRef.uid : undefined
      if (uid !== undefined && !endpoints.includes(uid)) endpoints.push(uid)
    }
  }
  try {
    return {
      include: true,
      service: normalizeService({
        hostname: `${name}.${namespace}.svc.${options.clusterDomain ?? 'cluster.local'}`,
        namespace: namespace as string,
        vips,
        ports,
        endpoints,
      }),
    }
  } catch (err) {
    if (isAmbientError(err)) return skip('invalid', err.message)
    throw err
  }
}
