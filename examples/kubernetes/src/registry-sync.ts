import {
  CoreV1Api,
  DiscoveryV1Api,
  KubeConfig,
  ListWatch,
  Watch,
  type KubernetesObject,
  type V1EndpointSlice,
  type V1Namespace,
  type V1Pod,
  type V1Service,
} from '@kubernetes/client-node'
import {
  AmbientError,
  CoreErrorCode,
  invalidArgument,
  silentLogger,
  throwIfAborted,
  type AbortOptions,
  type Closable,
  type Logger,
  type WorkloadRegistry,
} from '@ambientkit/core'
import { backoff, runInformer, SyncGate, type InformerLoop } from './informer'
import { evaluatePod, podAddresses, podToWorkload } from './pod'
import type { BackoffOptions } from './pod-source'
import { SERVICE_NAME_LABEL, serviceFromKubernetes } from './service'

/** Options of {@link createKubernetesRegistrySync}. */
export interface KubernetesRegistrySyncOptions {
  /** The registry to keep in step with the cluster. Required. */
  registry: WorkloadRegistry
  /** Where the API server is. Default: `KubeConfig.loadFromDefault()` (the pod's service account in a cluster). */
  kubeConfig?: KubeConfig
  /** SPIFFE trust domain of the workloads. Default: none (core's `cluster.local` applies). */
  trustDomain?: string
  /** DNS domain of service host names. Default `cluster.local`. */
  clusterDomain?: string
  /** Default: writes nothing. */
  logger?: Logger
  /** Restarts of a failed list/watch. Defaults: 500 ms doubling to 30 s. */
  watchRestart?: BackoffOptions
  /** Aborting it closes the sync. */
  signal?: AbortSignal
}

/** Keeps a {@link WorkloadRegistry} in step with the cluster's pods and services. */
export interface KubernetesRegistrySync extends Closable {
  /** Resolves once pods, namespaces, services and endpoint slices were all listed into the registry. */
  ready(options?: AbortOptions): Promise<void>
}

/**
 * Feeds a registry from the Kubernetes API, for the node proxy to resolve
 * any destination in the cluster: every pod with an address becomes a
 * workload, `HBONE` when it is in the mesh by the rules of `evaluatePod` on
 * its own node (so a terminating pod, released by its node agent, turns
 * `TCP`), `TCP` otherwise; every Service with a cluster IP becomes a service
 * (`serviceFromKubernetes`). Host-network pods are left out: their address
 * is their node's, shared by many. Pods that finished (Succeeded, Failed)
 * are removed. Namespace relabels update their pods' protocol.
 */
export function createKubernetesRegistrySync(options: KubernetesRegistrySyncOptions): KubernetesRegistrySync {
  if (typeof options?.registry?.upsertWorkload !== 'function') {
    throw invalidArgument('registry', options?.registry, 'a WorkloadRegistry (createWorkloadRegistry())')
  }
  return new RegistrySync(options)
}

const key = (obj: KubernetesObject): string => `${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`

class RegistrySync implements KubernetesRegistrySync {
  readonly #registry: WorkloadRegistry
  readonly #trustDomain: string | undefined
  readonly #clusterDomain: string
  readonly #log: Logger
  readonly #pods: ListWatch<V1Pod>
  readonly #namespaces: ListWatch<V1Namespace>
  readonly #services: ListWatch<V1Service>
  readonly #slices: ListWatch<V1EndpointSlice>
  readonly #loops: InformerLoop[] = []
  readonly #started = new Set<string>()
  readonly #synced = new SyncGate()
  /** The registry key (namespace, hostname) each Kubernetes service was written under. */
  readonly #serviceHosts = new Map<string, { namespace: string; hostname: string }>()
  /** The pod UID each namespace/name holds in the registry. */
  readonly #podUids = new Map<string, string>()
  readonly #signal: AbortSignal | undefined
  readonly #onAbort = (): void => void this.close()
  #closed = false

  constructor(options: KubernetesRegistrySyncOptions) {
    this.#registry = options.registry
    this.#trustDomain = options.trustDomain
    this.#clusterDomain = options.clusterDomain ?? 'cluster.local'
    this.#log = (options.logger ?? silentLogger).child({ component: 'kubernetes-registry-sync' })
    const restart = backoff('watchRestart', options.watchRestart, { initialDelayMs: 500, maxDelayMs: 30_000 })
    let kubeConfig = options.kubeConfig
    if (kubeConfig === undefined) {
      kubeConfig = new KubeConfig()
      kubeConfig.loadFromDefault()
    }
    const core = kubeConfig.makeApiClient(CoreV1Api)
    const discovery = kubeConfig.makeApiClient(DiscoveryV1Api)
    const watch = new Watch(kubeConfig)
    this.#pods = new ListWatch<V1Pod>('/api/v1/pods', watch, () => core.listPodForAllNamespaces(), false)
    this.#namespaces = new ListWatch<V1Namespace>('/api/v1/namespaces', watch, () => core.listNamespace(), false)
    this.#services = new ListWatch<V1Service>('/api/v1/services', watch, () => core.listServiceForAllNamespaces(), false)
    this.#slices = new ListWatch<V1EndpointSlice>('/apis/discovery.k8s.io/v1/endpointslices', watch, () => discovery.listEndpointSliceForAllNamespaces(), false)
    this.#pods.on('add', (pod) => this.#pod(pod))
    this.#pods.on('update', (pod) => this.#pod(pod))
    this.#pods.on('delete', (pod) => this.#podDeleted(pod))
    this.#namespaces.on('add', (ns) => this.#namespaceChanged(ns))
    this.#namespaces.on('update', (ns) => this.#namespaceChanged(ns))
    this.#namespaces.on('delete', (ns) => this.#namespaceChanged(ns))
    this.#services.on('change', (service) => this.#service(service.metadata?.namespace ?? '', service.metadata?.name ?? ''))
    const sliceChanged = (slice: V1EndpointSlice): void => {
      const name = slice.metadata?.labels?.[SERVICE_NAME_LABEL]
      if (name !== undefined) this.#service(slice.metadata?.namespace ?? '', name)
    }
    this.#slices.on('change', sliceChanged)
    this.#signal = options.signal
    if (this.#signal?.aborted === true) {
      this.#closed = true
      return
    }
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true })
    const informers: [string, ListWatch<KubernetesObject>][] = [
      ['pods', this.#pods],
      ['namespaces', this.#namespaces],
      ['services', this.#services],
      ['endpointslices', this.#slices],
    ]
    for (const [what, informer] of informers) {
      this.#loops.push(runInformer(what, informer, restart, this.#log, () => this.#startedOnce(what)))
    }
  }

  async ready({ signal }: AbortOptions = {}): Promise<void> {
    throwIfAborted(signal, 'waiting for the registry sync')
    if (this.#closed) throw closedError()
    await this.#synced.wait(signal, 'waiting for the registry sync')
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#signal?.removeEventListener('abort', this.#onAbort)
    await Promise.all(this.#loops.map((loop) => loop.stop()))
    this.#synced.fail(closedError())
  }

  #startedOnce(what: string): void {
    this.#started.add(what)
    if (this.#synced.isOpen || this.#started.size < 4) return
    const snapshot = this.#registry.snapshot()
    this.#log.info({ workloads: snapshot.workloads.length, services: snapshot.services.length }, 'registry synced')
    this.#synced.open()
  }

  #pod(pod: V1Pod): void {
    const uid = pod.metadata?.uid
    if (uid === undefined) return
    const k = key(pod)
    const previous = this.#podUids.get(k)
    if (previous !== undefined && previous !== uid) this.#registry.removeWorkload(previous)
    const phase = pod.status?.phase
    if (pod.spec?.hostNetwork === true || phase === 'Succeeded' || phase === 'Failed' || podAddresses(pod).length === 0) {
      this.#podUids.delete(k)
      this.#registry.removeWorkload(uid)
      return
    }
    const namespace = this.#namespaces.get(pod.metadata?.namespace ?? '')
    const inMesh = evaluatePod(pod, namespace, { nodeName: pod.spec?.nodeName ?? '' }).enroll
    try {
      this.#registry.upsertWorkload(
        podToWorkload(pod, { protocol: inMesh ? 'HBONE' : 'TCP', ...(this.#trustDomain === undefined ? {} : { trustDomain: this.#trustDomain }) }),
      )
      this.#podUids.set(k, uid)
    } catch (err) {
      this.#log.warn({ err, pod: k }, `pod ${k} left out of the registry`)
      this.#podUids.delete(k)
      this.#registry.removeWorkload(uid)
    }
  }

  #podDeleted(pod: V1Pod): void {
    const uid = pod.metadata?.uid
    if (uid === undefined) return
    if (this.#podUids.get(key(pod)) === uid) this.#podUids.delete(key(pod))
    this.#registry.removeWorkload(uid)
  }

  #namespaceChanged(ns: V1Namespace): void {
    // Its mesh label decides the protocol of its pods.
    const name = ns.metadata?.name
    if (name === undefined) return
    for (const pod of this.#pods.list(name)) this.#pod(pod)
  }

  #service(namespace: string, name: string): void {
    const k = `${namespace}/${name}`
    const service = this.#services.get(name, namespace)
    const previous = this.#serviceHosts.get(k)
    const decision = service === undefined ? undefined : serviceFromKubernetes(service, this.#slices.list(namespace), { clusterDomain: this.#clusterDomain })
    if (decision?.include === true) {
      this.#registry.upsertService(decision.service)
      this.#serviceHosts.set(k, { namespace: decision.service.namespace, hostname: decision.service.hostname })
      return
    }
    if (decision !== undefined) this.#log.debug({ service: k, reason: decision.reason }, decision.message)
    if (previous !== undefined) {
      this.#registry.removeService(previous.namespace, previous.hostname)
      this.#serviceHosts.delete(k)
    }
  }
}

function closedError(): AmbientError {
  return new AmbientError(CoreErrorCode.Closed, 'the Kubernetes registry sync is closed')
}
