import { loadAuthorizationPolicy, type AuthorizationPolicy, type Logger, type PolicyStore, type Service, type WorkloadRegistry } from '@ambientkit/core'
import {
  convertAuthorization,
  convertService,
  convertWorkload,
  ResourceError,
  type ConvertedPolicy,
  type ConvertedService,
  type ConvertedWorkload,
  type PolicyView,
  type ServiceView,
  type WorkloadView,
} from './convert'
import type protobuf from 'protobufjs'
import { decodeMessage, messageType } from './protos'
import type { XdsAddress, XdsAuthorization, XdsResource } from './xds-types'

/** The type URL of WDS addresses (a Workload or a Service in an `istio.workload.Address`). */
export const ADDRESS_TYPE_URL = 'type.googleapis.com/istio.workload.Address'
/** The type URL of WDS authorization policies. */
export const AUTHORIZATION_TYPE_URL = 'type.googleapis.com/istio.security.Authorization'

/** Bounds on what istiod (or anything posing as it) can make the client hold. */
export interface WdsLimits {
  /** Largest response accepted, in bytes; a larger one ends the stream (gRPC RESOURCE_EXHAUSTED), as in ztunnel. Default 200 MiB. */
  readonly maxMessageBytes?: number
  /** Most resources plus removals in one response; a response with more is refused whole (NACK). Default 100,000. */
  readonly maxResourcesPerResponse?: number
  /** Largest encoded resource; a larger one is refused alone. Default 1 MiB. */
  readonly maxResourceBytes?: number
  /** Most resources held per type; new names past it are refused. Default 1,000,000. */
  readonly maxResources?: number
}

export const DEFAULT_LIMITS: Required<WdsLimits> = {
  maxMessageBytes: 200 * 1024 * 1024,
  maxResourcesPerResponse: 100_000,
  maxResourceBytes: 1024 * 1024,
  maxResources: 1_000_000,
}

/** A resource refused in a response: the NACK's "<name>: <reason>". */
export interface RejectedResource {
  readonly name: string
  readonly reason: string
}

/** What the client holds from istiod, as `/config_dump` shows it (the shape of ztunnel's). */
export interface WdsStateDump {
  readonly workloads: readonly WorkloadView[]
  readonly services: ReadonlyArray<ServiceView & { readonly endpoints: readonly string[] }>
  readonly policies: readonly PolicyView[]
}

interface Endpoint {
  ports: Readonly<Record<number, number>>
  healthy: boolean
}

/**
 * The WDS state and its projection into core's registry and policy store.
 * One call applies one response: upserts in order, then removals, then
 * each touched service and policy is written once.
 */
export class WdsState {
  readonly #registry: WorkloadRegistry
  readonly #policies: PolicyStore
  readonly #limits: Required<WdsLimits>
  readonly #log: Logger
  readonly #workloads = new Map<string, ConvertedWorkload>()
  readonly #services = new Map<string, ConvertedService>()
  /** Service key → its endpoints, kept even while the service itself is unknown (workloads may arrive first). */
  readonly #endpoints = new Map<string, Map<string, Endpoint>>()
  readonly #authorizations = new Map<string, ConvertedPolicy>()
  /** Policy key → uids of the workloads that list it (scope WORKLOAD_SELECTOR). */
  readonly #selections = new Map<string, Set<string>>()
  /** Policy key → the core policy in force. */
  readonly #enforced = new Map<string, AuthorizationPolicy>()
  /** Type URL → resource name → the version last accepted (sent back as initial_resource_versions). */
  readonly #versions = new Map<string, Map<string, string>>([
    [ADDRESS_TYPE_URL, new Map()],
    [AUTHORIZATION_TYPE_URL, new Map()],
  ])
  readonly #addressType = messageType('istio.workload.Address')
  readonly #authorizationType = messageType('istio.security.Authorization')

  constructor(registry: WorkloadRegistry, policies: PolicyStore, limits: Required<WdsLimits>, log: Logger) {
    this.#registry = registry
    this.#policies = policies
    this.#limits = limits
    this.#log = log
  }

  /** The versions held for `typeUrl`, as `initial_resource_versions`. */
  versions(typeUrl: string): Record<string, string> {
    return Object.fromEntries(this.#versions.get(typeUrl) ?? [])
  }

  /** How many resources of `typeUrl` are held. */
  count(typeUrl: string): number {
    return this.#versions.get(typeUrl)?.size ?? 0
  }

  /** Applies one response of a known type; returns the resources refused (empty: ACK). */
  apply(typeUrl: string, resources: readonly XdsResource[], removed: readonly string[]): RejectedResource[] {
    const total = resources.length + removed.length
    if (total > this.#limits.maxResourcesPerResponse) {
      return [{ name: 'response', reason: `${total} resources and removals exceed the limit of ${this.#limits.maxResourcesPerResponse}; nothing applied` }]
    }
    return typeUrl === ADDRESS_TYPE_URL ? this.#applyAddresses(resources, removed) : this.#applyAuthorizations(resources, removed)
  }

  #decode<T>(type: protobuf.Type, resource: XdsResource, versions: Map<string, string>): T {
    if (resource.name === '') throw new ResourceError('a resource without a name')
    if (resource.resource === null) throw new ResourceError('the resource is missing')
    const size = resource.resource.value.length
    if (size > this.#limits.maxResourceBytes) throw new ResourceError(`${size} bytes exceed the limit of ${this.#limits.maxResourceBytes}`)
    if (!versions.has(resource.name) && versions.size >= this.#limits.maxResources) {
      throw new ResourceError(`the limit of ${this.#limits.maxResources} resources of this type is reached`)
    }
    try {
      return decodeMessage<T>(type, resource.resource.value)
    } catch (err) {
      throw new ResourceError(`cannot decode: ${(err as Error).message}`)
    }
  }

  #applyAddresses(resources: readonly XdsResource[], removed: readonly string[]): RejectedResource[] {
    const versions = this.#versions.get(ADDRESS_TYPE_URL)!
    const rejected: RejectedResource[] = []
    const services = new Set<string>()
    const policies = new Set<string>()
    for (const resource of resources) {
      try {
        const address = this.#decode<XdsAddress>(this.#addressType, resource, versions)
        if (address.type === 'workload') this.#upsertWorkload(convertWorkload(address.workload!, resource.name), services, policies)
        else if (address.type === 'service') this.#upsertService(convertService(address.service!, resource.name), services)
        else throw new ResourceError('an address with neither a workload nor a service')
        versions.set(resource.name, resource.version)
      } catch (err) {
        rejected.push({ name: resource.name, reason: (err as Error).message })
      }
    }
    for (const name of removed) {
      versions.delete(name)
      if (this.#workloads.has(name)) this.#removeWorkload(name, services, policies)
      else if (this.#services.has(name)) this.#removeService(name, services)
    }
    for (const key of services) this.#writeService(key)
    // A workload that joins or leaves a selection changes the policy's list of workloads.
    const changes = new Map<string, AuthorizationPolicy | undefined>()
    for (const key of policies) {
      const converted = this.#authorizations.get(key)
      if (converted?.selected !== true || converted.policy === undefined) continue
      try {
        changes.set(key, loadAuthorizationPolicy(this.#corePolicy(converted)))
      } catch (err) {
        this.#log.error({ err, policy: key }, 'cannot load an authorization policy')
      }
    }
    this.#commitPolicies(changes)
    return rejected
  }

  #upsertWorkload(converted: ConvertedWorkload, services: Set<string>, policies: Set<string>): void {
    const uid = converted.workload.uid
    const previous = this.#workloads.get(uid)
    // Validates before anything changes: a refused workload leaves the previous one in place.
    this.#registry.upsertWorkload(converted.workload)
    this.#workloads.set(uid, converted)
    for (const key of previous?.services.keys() ?? []) {
      if (!converted.services.has(key)) {
        this.#endpoints.get(key)?.delete(uid)
        services.add(key)
      }
    }
    for (const [key, ports] of converted.services) {
      let endpoints = this.#endpoints.get(key)
      if (endpoints === undefined) this.#endpoints.set(key, (endpoints = new Map()))
      const before = endpoints.get(uid)
      if (before === undefined || before.healthy !== converted.healthy || !samePorts(before.ports, ports)) {
        endpoints.set(uid, { ports, healthy: converted.healthy })
        services.add(key)
      }
    }
    const was = new Set(previous?.policies ?? [])
    const now = new Set(converted.policies)
    for (const key of was) if (!now.has(key)) this.#deselect(key, uid, policies)
    for (const key of now) {
      if (was.has(key)) continue
      let selected = this.#selections.get(key)
      if (selected === undefined) this.#selections.set(key, (selected = new Set()))
      selected.add(uid)
      policies.add(key)
    }
  }

  #deselect(key: string, uid: string, policies: Set<string>): void {
    const selected = this.#selections.get(key)
    selected?.delete(uid)
    if (selected?.size === 0) this.#selections.delete(key)
    policies.add(key)
  }

  #removeWorkload(uid: string, services: Set<string>, policies: Set<string>): void {
    const previous = this.#workloads.get(uid)!
    this.#workloads.delete(uid)
    this.#registry.removeWorkload(uid)
    for (const key of previous.services.keys()) {
      const endpoints = this.#endpoints.get(key)
      endpoints?.delete(uid)
      if (endpoints?.size === 0) this.#endpoints.delete(key)
      services.add(key)
    }
    for (const key of previous.policies) this.#deselect(key, uid, policies)
  }

  #upsertService(converted: ConvertedService, services: Set<string>): void {
    this.#services.set(converted.key, converted)
    services.add(converted.key)
  }

  #removeService(key: string, services: Set<string>): void {
    const previous = this.#services.get(key)!
    this.#services.delete(key)
    services.delete(key)
    this.#registry.removeService(previous.service.namespace, previous.service.hostname)
  }

  #serviceWithEndpoints(key: string): Service | undefined {
    const converted = this.#services.get(key)
    if (converted === undefined) return undefined
    const endpoints: string[] = []
    let endpointPorts: Record<string, Record<number, number>> | undefined
    for (const [uid, endpoint] of this.#endpoints.get(key) ?? []) {
      // ztunnel sends traffic to unhealthy endpoints only under health policy ALLOW_ALL.
      if (!endpoint.healthy && !converted.includeUnhealthy) continue
      endpoints.push(uid)
      const own = Object.entries(endpoint.ports).filter(([, target]) => target !== 0)
      if (own.length > 0) (endpointPorts ??= {})[uid] = Object.fromEntries(own)
    }
    return { ...converted.service, endpoints, ...(endpointPorts === undefined ? {} : { endpointPorts }) }
  }

  #writeService(key: string): void {
    const service = this.#serviceWithEndpoints(key)
    if (service === undefined) return
    try {
      this.#registry.upsertService(service)
    } catch (err) {
      // Validated when converted; endpoints and their ports are ours.
      this.#log.error({ err, service: key }, 'cannot write a service into the registry')
    }
  }

  #applyAuthorizations(resources: readonly XdsResource[], removed: readonly string[]): RejectedResource[] {
    const versions = this.#versions.get(AUTHORIZATION_TYPE_URL)!
    const rejected: RejectedResource[] = []
    // Policy key → the core policy to enforce, or undefined to enforce none (removed, or dry run).
    const changes = new Map<string, AuthorizationPolicy | undefined>()
    for (const resource of resources) {
      try {
        const converted = convertAuthorization(this.#decode<XdsAuthorization>(this.#authorizationType, resource, versions), resource.name)
        // Loaded here, so that a policy core refuses is refused alone.
        const policy = converted.policy === undefined ? undefined : loadAuthorizationPolicy(this.#corePolicy(converted))
        this.#authorizations.set(converted.key, converted)
        versions.set(resource.name, resource.version)
        changes.set(converted.key, policy)
      } catch (err) {
        rejected.push({ name: resource.name, reason: (err as Error).message })
      }
    }
    for (const name of removed) {
      versions.delete(name)
      if (this.#authorizations.delete(name)) changes.set(name, undefined)
    }
    this.#commitPolicies(changes)
    return rejected
  }

  #corePolicy(converted: ConvertedPolicy): Record<string, unknown> {
    if (!converted.selected) return converted.policy!
    return { ...converted.policy, workloads: [...(this.#selections.get(converted.key) ?? [])] }
  }

  /** Applies policy changes to the store as one change, so that connections are re-evaluated once. */
  #commitPolicies(changes: ReadonlyMap<string, AuthorizationPolicy | undefined>): void {
    const upsert: AuthorizationPolicy[] = []
    const remove: AuthorizationPolicy[] = []
    for (const [key, policy] of changes) {
      const previous = this.#enforced.get(key)
      if (policy !== undefined) {
        this.#enforced.set(key, policy)
        upsert.push(policy)
      } else if (previous !== undefined) {
        this.#enforced.delete(key)
        remove.push(previous)
      }
    }
    if (upsert.length > 0 || remove.length > 0) this.#policies.update({ upsert, remove })
  }

  dump(): WdsStateDump {
    return {
      workloads: [...this.#workloads.values()].map((w) => w.view),
      services: [...this.#services.values()].map((s) => ({ ...s.view, endpoints: this.#serviceWithEndpoints(s.key)?.endpoints ?? [] })),
      policies: [...this.#authorizations.values()].map((p) => p.view),
    }
  }
}

function samePorts(a: Readonly<Record<number, number>>, b: Readonly<Record<number, number>>): boolean {
  const keys = Object.keys(a)
  if (keys.length !== Object.keys(b).length) return false
  return keys.every((k) => a[k as unknown as number] === b[k as unknown as number])
}
