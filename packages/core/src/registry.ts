import { ipFamily, tryCanonicalIp } from './address'
import { createSubscribers, type Subscribable } from './lifecycle'
import { normalizeService, normalizeWorkload, type Service, type Workload } from './workload'

/** A change to a {@link WorkloadRegistry}, delivered to its subscribers. */
export type RegistryChange =
  | { readonly type: 'workload-added' | 'workload-updated'; readonly workload: Workload; readonly previous?: Workload }
  | { readonly type: 'workload-removed'; readonly workload: Workload }
  | { readonly type: 'service-added' | 'service-updated'; readonly service: Service; readonly previous?: Service }
  | { readonly type: 'service-removed'; readonly service: Service }

/** Everything a registry holds; the input of {@link WorkloadRegistry.replaceAll}. */
export interface RegistrySnapshot {
  readonly workloads: readonly Workload[]
  readonly services: readonly Service[]
}

/** Where traffic to an address and port goes, as the registry sees it. */
export type Destination =
  | { readonly kind: 'workload'; readonly workload: Workload; readonly address: string; readonly port: number }
  | {
      readonly kind: 'service'
      readonly service: Service
      /** The endpoint chosen for this connection. */
      readonly workload: Workload
      /** The endpoint's address, of the same family as the VIP when it has one. */
      readonly address: string
      /** The target port on the endpoint. */
      readonly port: number
    }

/** The mesh's view of workloads and services; subscribers get a {@link RegistryChange} for every change. */
export interface WorkloadRegistry extends Subscribable<RegistryChange> {
  /** Adds or replaces a workload (by uid). Validates it first; throws `ERR_AMBIENT_INVALID_WORKLOAD`. */
  upsertWorkload(workload: Workload): Workload
  /** Removes a workload; false if it was not there. */
  removeWorkload(uid: string): boolean
  /** Adds or replaces a service (by namespace and hostname). */
  upsertService(service: Service): Service
  /** Removes a service; false if it was not there. */
  removeService(namespace: string, hostname: string): boolean
  /** The workload with this uid. */
  workloadByUid(uid: string): Workload | undefined
  /** The workload with this address, in any textual form (O(1)). */
  workloadByAddress(address: string): Workload | undefined
  /** The service with this VIP (O(1)). */
  serviceByVip(vip: string): Service | undefined
  /**
   * The services with this host name, of every namespace (O(1)), compared
   * as DNS does: case-insensitive, a trailing dot ignored. A name like
   * `*.example.com` finds the services whose host name is that wildcard.
   */
  servicesByHostname(hostname: string): readonly Service[]
  /**
   * Resolves a connection's original destination: a workload address, or a
   * service VIP and port with an endpoint chosen round-robin among those
   * that have an address. `undefined` when the registry does not know it,
   * or the service has no such port or no usable endpoint.
   */
  resolve(address: string, port: number): Destination | undefined
  /** Every workload and service. */
  snapshot(): RegistrySnapshot
  /**
   * Makes the registry hold exactly `snapshot`, emitting one change for each
   * difference (nothing for entries that are equal): how a watcher reconciles.
   */
  replaceAll(snapshot: RegistrySnapshot): void
}

/** Creates an empty {@link WorkloadRegistry}. */
export function createWorkloadRegistry(snapshot?: RegistrySnapshot): WorkloadRegistry {
  const registry = new Registry()
  if (snapshot !== undefined) registry.replaceAll(snapshot)
  return registry
}

const serviceKey = (namespace: string, hostname: string): string => `${namespace}/${hostname}`

/** A host name as DNS compares it: lower case, without the root's trailing dot. */
const hostKey = (hostname: string): string => (hostname.endsWith('.') ? hostname.slice(0, -1) : hostname).toLowerCase()

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b)
}

class Registry implements WorkloadRegistry {
  readonly #workloads = new Map<string, Workload>()
  readonly #byAddress = new Map<string, Workload>()
  readonly #services = new Map<string, Service>()
  readonly #byVip = new Map<string, Service>()
  readonly #byHostname = new Map<string, Service[]>()
  readonly #cursor = new Map<string, number>()
  readonly #subscribers = createSubscribers<RegistryChange>({ what: 'workload registry' })
  readonly subscribe = this.#subscribers.subscribe

  upsertWorkload(input: Workload): Workload {
    const workload = normalizeWorkload(input)
    const previous = this.#workloads.get(workload.uid)
    if (previous !== undefined && sameJson(previous, workload)) return previous
    if (previous !== undefined) this.#unindexWorkload(previous)
    this.#workloads.set(workload.uid, workload)
    // The newest claim on an address wins: a pod's IP can be reused by its
    // successor before the watcher has seen the old pod's deletion.
    for (const address of workload.addresses) this.#byAddress.set(address, workload)
    this.#emit(previous === undefined ? { type: 'workload-added', workload } : { type: 'workload-updated', workload, previous })
    return workload
  }

  removeWorkload(uid: string): boolean {
    const workload = this.#workloads.get(uid)
    if (workload === undefined) return false
    this.#workloads.delete(uid)
    this.#unindexWorkload(workload)
    this.#emit({ type: 'workload-removed', workload })
    return true
  }

  #unindexWorkload(workload: Workload): void {
    for (const address of workload.addresses) {
      if (this.#byAddress.get(address) === workload) this.#byAddress.delete(address)
    }
  }

  upsertService(input: Service): Service {
    const service = normalizeService(input)
    const key = serviceKey(service.namespace, service.hostname)
    const previous = this.#services.get(key)
    if (previous !== undefined && sameJson(previous, service)) return previous
    if (previous !== undefined) this.#unindexService(previous)
    this.#services.set(key, service)
    for (const vip of service.vips) this.#byVip.set(vip, service)
    const host = hostKey(service.hostname)
    this.#byHostname.set(host, [...(this.#byHostname.get(host) ?? []), service])
    this.#emit(previous === undefined ? { type: 'service-added', service } : { type: 'service-updated', service, previous })
    return service
  }

  removeService(namespace: string, hostname: string): boolean {
    const key = serviceKey(namespace, hostname)
    const service = this.#services.get(key)
    if (service === undefined) return false
    this.#services.delete(key)
    this.#cursor.delete(key)
    this.#unindexService(service)
    this.#emit({ type: 'service-removed', service })
    return true
  }

  #unindexService(service: Service): void {
    for (const vip of service.vips) {
      if (this.#byVip.get(vip) === service) this.#byVip.delete(vip)
    }
    const host = hostKey(service.hostname)
    const rest = (this.#byHostname.get(host) ?? []).filter((s) => s !== service)
    if (rest.length === 0) this.#byHostname.delete(host)
    else this.#byHostname.set(host, rest)
  }

  workloadByUid(uid: string): Workload | undefined {
    return this.#workloads.get(uid)
  }

  workloadByAddress(address: string): Workload | undefined {
    const canonical = tryCanonicalIp(address)
    return canonical === undefined ? undefined : this.#byAddress.get(canonical)
  }

  serviceByVip(vip: string): Service | undefined {
    const canonical = tryCanonicalIp(vip)
    return canonical === undefined ? undefined : this.#byVip.get(canonical)
  }

  servicesByHostname(hostname: string): readonly Service[] {
    return this.#byHostname.get(hostKey(hostname)) ?? []
  }

  resolve(address: string, port: number): Destination | undefined {
    const canonical = tryCanonicalIp(address)
    if (canonical === undefined) return undefined
    const workload = this.#byAddress.get(canonical)
    if (workload !== undefined) return { kind: 'workload', workload, address: canonical, port }
    const service = this.#byVip.get(canonical)
    const servicePort = service?.ports[port]
    if (service === undefined || servicePort === undefined) return undefined
    const family = ipFamily(canonical)
    const candidates: Array<{ workload: Workload; address: string; port: number }> = []
    for (const uid of service.endpoints) {
      const endpoint = this.#workloads.get(uid)
      const endpointAddress =
        endpoint?.addresses.find((a) => ipFamily(a) === family) ?? endpoint?.addresses[0]
      // The endpoint's own target port first (a named port), else the service's.
      const targetPort = service.endpointPorts?.[uid]?.[port] ?? servicePort
      if (endpoint !== undefined && endpointAddress !== undefined && targetPort !== 0) {
        candidates.push({ workload: endpoint, address: endpointAddress, port: targetPort })
      }
    }
    if (candidates.length === 0) return undefined
    const key = serviceKey(service.namespace, service.hostname)
    const next = this.#cursor.get(key) ?? 0
    this.#cursor.set(key, (next + 1) % candidates.length)
    const chosen = candidates[next % candidates.length]!
    return { kind: 'service', service, workload: chosen.workload, address: chosen.address, port: chosen.port }
  }

  snapshot(): RegistrySnapshot {
    return { workloads: [...this.#workloads.values()], services: [...this.#services.values()] }
  }

  replaceAll(snapshot: RegistrySnapshot): void {
    // Validate everything before changing anything: a bad entry must not
    // leave the registry half-reconciled.
    const workloads = snapshot.workloads.map(normalizeWorkload)
    const services = snapshot.services.map(normalizeService)
    const keepWorkloads = new Set(workloads.map((w) => w.uid))
    const keepServices = new Set(services.map((s) => serviceKey(s.namespace, s.hostname)))
    for (const uid of [...this.#workloads.keys()]) if (!keepWorkloads.has(uid)) this.removeWorkload(uid)
    for (const service of [...this.#services.values()]) {
      if (!keepServices.has(serviceKey(service.namespace, service.hostname))) this.removeService(service.namespace, service.hostname)
    }
    for (const workload of workloads) this.upsertWorkload(workload)
    for (const service of services) this.upsertService(service)
  }

  #emit(change: RegistryChange): void {
    this.#subscribers.emit(change)
  }
}
