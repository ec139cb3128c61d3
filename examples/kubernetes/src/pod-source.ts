import { CoreV1Api, KubeConfig, ListWatch, Watch, type KubernetesObject, type V1Namespace, type V1Pod } from '@kubernetes/client-node'
import {
  AmbientError,
  CoreErrorCode,
  createSubscribers,
  invalidArgument,
  silentLogger,
  throwIfAborted,
  type AbortOptions,
  type Logger,
  type PodEnrollment,
  type PodSource,
  type PodSourceEvent,
  type SubscribeOptions,
  type Subscribers,
  type Unsubscribe,
} from '@ambientkit/core'
import { backoff, runInformer, SyncGate, type InformerLoop } from './informer'
import { createProcNetnsResolver, type NetnsResolver } from './netns'
import { DATAPLANE_MODE_LABEL, evaluatePod, podAddresses, type PodSkipReason } from './pod'

/** A delay that doubles after each failure, up to a ceiling. */
export interface BackoffOptions {
  /** The first delay, in milliseconds. */
  initialDelayMs?: number
  /** The ceiling, in milliseconds. */
  maxDelayMs?: number
}

/** How long to keep looking for a pod's network namespace. */
export interface NetnsRetryOptions extends BackoffOptions {
  /**
   * Lookups before giving up on a pod until its object changes again (a
   * pod whose sandbox never shows up in `/proc`, such as a VM-isolated one,
   * must not be retried forever). Default 20.
   */
  maxAttempts?: number
}

/** Options of {@link createKubernetesPodSource}. */
export interface KubernetesPodSourceOptions {
  /**
   * Where the API server is and how to authenticate. Default: a
   * `KubeConfig` loaded with `loadFromDefault()`, which uses the pod's
   * service account token when running in a cluster, else `$KUBECONFIG` or
   * `~/.kube/config`.
   */
  kubeConfig?: KubeConfig
  /** This node's name (`spec.nodeName` of its pods): pass the downward API's `spec.nodeName`. Required. */
  nodeName: string
  /** SPIFFE trust domain of the enrolled workloads. Default: none (core's `cluster.local` applies). */
  trustDomain?: string
  /** Finds a pod's network namespace. Default {@link createProcNetnsResolver} with `/proc`. */
  netnsResolver?: NetnsResolver
  /** Default: writes nothing. */
  logger?: Logger
  /** Retries of a netns lookup. Defaults: 250 ms doubling to 10 s, 20 attempts. */
  netnsRetry?: NetnsRetryOptions
  /** Restarts of a list/watch that failed (API server unreachable, 5xx...). Defaults: 500 ms doubling to 30 s. */
  watchRestart?: BackoffOptions
  /** Aborting it closes the source. */
  signal?: AbortSignal
}

/** Why a pod on this node is not captured right now. */
export interface SkippedPod {
  readonly uid: string
  readonly namespace: string
  readonly name: string
  readonly reason: PodSkipReason | 'netns-not-found'
  readonly message: string
}

/** What a {@link KubernetesPodSource} knows, for diagnostics. */
export interface KubernetesPodSourceState {
  /** True once pods and namespaces were listed and the first netns lookup ran. */
  readonly synced: boolean
  readonly enrolled: readonly PodEnrollment[]
  /** Pods that should be captured but whose network namespace is still being looked for. */
  readonly pending: readonly { readonly uid: string; readonly namespace: string; readonly name: string; readonly attempts: number }[]
  readonly skipped: readonly SkippedPod[]
}

/** A {@link PodSource} fed by the Kubernetes API. */
export interface KubernetesPodSource extends PodSource {
  /** The current view: enrolled, pending and skipped pods with reasons. */
  state(): KubernetesPodSourceState
}

interface Entry {
  pod: V1Pod
  enrolled?: PodEnrollment
  netnsPath?: string
  /** Addresses the netns was found for: a new sandbox (new IPs) means a new netns. */
  netnsFor?: string
  pending: boolean
  attempts: number
  gaveUp: boolean
  timer?: NodeJS.Timeout
  skip?: SkippedPod
}

const key = (obj: KubernetesObject): string => `${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`

function positive(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback
  if (!Number.isFinite(value) || value <= 0) throw invalidArgument(name, value, 'a positive number')
  return value
}

/**
 * Watches the Kubernetes API for the pods of one node that belong in the
 * ambient mesh (see {@link evaluatePod}) and yields them, with their network
 * namespace, as a {@link PodSource} for a node agent.
 *
 * It lists and watches this node's pods (field selector `spec.nodeName`) and
 * all namespaces (for their `istio.io/dataplane-mode` label), re-evaluates a
 * namespace's pods when that label changes, relists after `410 Gone`,
 * restarts failed watches with backoff, and keeps looking for the network
 * namespace of a pod whose sandbox is not visible yet. Starts at once;
 * `list()` resolves after the first sync.
 */
export function createKubernetesPodSource(options: KubernetesPodSourceOptions): KubernetesPodSource {
  if (typeof options?.nodeName !== 'string' || options.nodeName.length === 0) {
    throw invalidArgument('nodeName', options?.nodeName, "this node's name, a non-empty string")
  }
  return new KubePodSource(options)
}

class KubePodSource implements KubernetesPodSource {
  readonly #nodeName: string
  readonly #trustDomain: string | undefined
  readonly #resolver: NetnsResolver
  readonly #log: Logger
  readonly #retry: Required<NetnsRetryOptions>
  readonly #restart: Required<BackoffOptions>
  readonly #pods: ListWatch<V1Pod>
  readonly #namespaces: ListWatch<V1Namespace>
  readonly #entries = new Map<string, Entry>()
  readonly #uidByKey = new Map<string, string>()
  readonly #namespaceObjects = new Map<string, V1Namespace>()
  readonly #subscribers: Subscribers<PodSourceEvent>
  readonly #loops: InformerLoop[] = []
  readonly #started = new Set<string>()
  readonly #resolveQueue = new Set<string>()
  readonly #synced = new SyncGate()
  readonly #signal: AbortSignal | undefined
  readonly #onAbort = (): void => void this.close()
  #resolving: Promise<void> | undefined
  #closed = false

  constructor(options: KubernetesPodSourceOptions) {
    this.#nodeName = options.nodeName
    this.#trustDomain = options.trustDomain
    this.#resolver = options.netnsResolver ?? createProcNetnsResolver()
    this.#log = (options.logger ?? silentLogger).child({ component: 'kubernetes-pod-source', node: options.nodeName })
    this.#subscribers = createSubscribers({ logger: this.#log, what: 'Kubernetes pod source' })
    this.#retry = {
      initialDelayMs: positive('netnsRetry.initialDelayMs', options.netnsRetry?.initialDelayMs, 250),
      maxDelayMs: positive('netnsRetry.maxDelayMs', options.netnsRetry?.maxDelayMs, 10_000),
      maxAttempts: positive('netnsRetry.maxAttempts', options.netnsRetry?.maxAttempts, 20),
    }
    this.#restart = backoff('watchRestart', options.watchRestart, { initialDelayMs: 500, maxDelayMs: 30_000 })
    let kubeConfig = options.kubeConfig
    if (kubeConfig === undefined) {
      kubeConfig = new KubeConfig()
      kubeConfig.loadFromDefault()
    }
    const api = kubeConfig.makeApiClient(CoreV1Api)
    const watch = new Watch(kubeConfig)
    const fieldSelector = `spec.nodeName=${options.nodeName}`
    this.#pods = new ListWatch<V1Pod>(
      '/api/v1/pods',
      watch,
      () => api.listPodForAllNamespaces({ fieldSelector }),
      false,
      undefined,
      fieldSelector,
    )
    this.#namespaces = new ListWatch<V1Namespace>(
      '/api/v1/namespaces',
      watch,
      () => api.listNamespace(),
      false,
    )
    this.#pods.on('add', (pod) => this.#onPod(pod))
    this.#pods.on('update', (pod) => this.#onPod(pod))
    this.#pods.on('delete', (pod) => this.#onPodDeleted(pod))
    this.#namespaces.on('add', (ns) => this.#onNamespace(ns))
    this.#namespaces.on('update', (ns) => this.#onNamespace(ns))
    this.#namespaces.on('delete', (ns) => this.#onNamespaceDeleted(ns))
    this.#signal = options.signal
    if (this.#signal?.aborted === true) {
      this.#closed = true
      return
    }
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true })
    this.#loops.push(runInformer('pods', this.#pods, this.#restart, this.#log, () => this.#maybeSynced('pods')))
    this.#loops.push(runInformer('namespaces', this.#namespaces, this.#restart, this.#log, () => this.#maybeSynced('namespaces')))
  }

  async list({ signal }: AbortOptions = {}): Promise<PodEnrollment[]> {
    throwIfAborted(signal, 'listing pods')
    if (this.#closed) throw closedError()
    await this.#synced.wait(signal, 'listing pods')
    return this.#enrolled()
  }

  subscribe(listener: (event: PodSourceEvent) => void, options?: SubscribeOptions): Unsubscribe {
    if (this.#closed) throw closedError()
    return this.#subscribers.subscribe(listener, options)
  }

  state(): KubernetesPodSourceState {
    const pending: { uid: string; namespace: string; name: string; attempts: number }[] = []
    const skipped: SkippedPod[] = []
    for (const [uid, entry] of this.#entries) {
      if (entry.pending) {
        pending.push({ uid, namespace: entry.pod.metadata?.namespace ?? '', name: entry.pod.metadata?.name ?? '', attempts: entry.attempts })
      }
      if (entry.skip !== undefined) skipped.push(entry.skip)
    }
    return { synced: this.#synced.isOpen, enrolled: this.#enrolled(), pending, skipped }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#signal?.removeEventListener('abort', this.#onAbort)
    await Promise.all(this.#loops.map((loop) => loop.stop()))
    for (const entry of this.#entries.values()) clearTimeout(entry.timer)
    this.#subscribers.clear()
    this.#synced.fail(closedError())
    await this.#resolving
  }

  #enrolled(): PodEnrollment[] {
    const out: PodEnrollment[] = []
    for (const entry of this.#entries.values()) if (entry.enrolled !== undefined) out.push(entry.enrolled)
    return out
  }

  #maybeSynced(informer: 'pods' | 'namespaces'): void {
    this.#started.add(informer)
    if (this.#synced.isOpen || this.#started.size < 2) return
    // Find the namespaces of everything listed before declaring the first
    // sync, so that list() returns the pods of this node rather than none.
    void this.#resolvePending().then(() => {
      if (this.#synced.isOpen || this.#closed) return
      this.#log.info({ enrolled: this.#enrolled().length }, 'pods synced')
      this.#synced.open()
      // Pods that became ready for a lookup while the first one ran.
      void this.#resolvePending()
    })
  }

  #onPod(pod: V1Pod): void {
    const uid = pod.metadata?.uid
    if (uid === undefined) return
    const k = key(pod)
    const previousUid = this.#uidByKey.get(k)
    // A StatefulSet pod recreated under the same name while the watch was
    // down arrives as an update of the old object: it is another pod.
    if (previousUid !== undefined && previousUid !== uid) this.#forget(previousUid)
    this.#uidByKey.set(k, uid)
    let entry = this.#entries.get(uid)
    if (entry === undefined) {
      entry = { pod, pending: false, attempts: 0, gaveUp: false }
      this.#entries.set(uid, entry)
    } else {
      entry.pod = pod
      // A changed pod object is a new chance for a pod we had given up on.
      entry.gaveUp = false
    }
    this.#evaluate(uid, entry)
  }

  #onPodDeleted(pod: V1Pod): void {
    const uid = pod.metadata?.uid
    if (uid === undefined) return
    if (this.#uidByKey.get(key(pod)) === uid) this.#uidByKey.delete(key(pod))
    this.#forget(uid)
  }

  #forget(uid: string): void {
    const entry = this.#entries.get(uid)
    if (entry === undefined) return
    clearTimeout(entry.timer)
    this.#entries.delete(uid)
    this.#resolveQueue.delete(uid)
    if (entry.enrolled !== undefined) {
      this.#log.info({ uid, pod: key(entry.pod) }, 'pod removed from the mesh: deleted')
      this.#emit({ type: 'remove', uid })
    }
  }

  #onNamespace(ns: V1Namespace): void {
    const name = ns.metadata?.name
    if (name === undefined) return
    const before = this.#namespaceObjects.get(name)?.metadata?.labels?.[DATAPLANE_MODE_LABEL]
    this.#namespaceObjects.set(name, ns)
    if (before !== ns.metadata?.labels?.[DATAPLANE_MODE_LABEL]) this.#reevaluateNamespace(name)
  }

  #onNamespaceDeleted(ns: V1Namespace): void {
    const name = ns.metadata?.name
    if (name === undefined) return
    this.#namespaceObjects.delete(name)
    this.#reevaluateNamespace(name)
  }

  #reevaluateNamespace(name: string): void {
    for (const [uid, entry] of this.#entries) if (entry.pod.metadata?.namespace === name) this.#evaluate(uid, entry)
  }

  #evaluate(uid: string, entry: Entry): void {
    const pod = entry.pod
    const names = { uid, namespace: pod.metadata?.namespace ?? '', name: pod.metadata?.name ?? '' }
    const decision = evaluatePod(pod, this.#namespaceObjects.get(names.namespace), {
      nodeName: this.#nodeName,
      ...(this.#trustDomain === undefined ? {} : { trustDomain: this.#trustDomain }),
    })
    if (!decision.enroll) {
      this.#stopLooking(entry)
      entry.netnsPath = undefined
      entry.skip = { ...names, reason: decision.reason, message: decision.message }
      if (entry.enrolled !== undefined) {
        entry.enrolled = undefined
        this.#log.info({ uid, pod: key(pod), reason: decision.reason }, `pod removed from the mesh: ${decision.message}`)
        this.#emit({ type: 'remove', uid })
      } else {
        this.#log.debug({ uid, pod: key(pod), reason: decision.reason }, decision.message)
      }
      return
    }
    const addresses = decision.workload.addresses.join(',')
    if (entry.netnsPath !== undefined && entry.netnsFor !== addresses) entry.netnsPath = undefined
    if (entry.netnsPath === undefined) {
      if (entry.gaveUp) return
      entry.skip = { ...names, reason: 'netns-not-found', message: `pod ${key(pod)}: network namespace not found yet` }
      if (!entry.pending) {
        entry.pending = true
        entry.attempts = 0
        this.#log.debug({ uid, pod: key(pod) }, `pod ${key(pod)} qualifies; looking for its network namespace`)
        this.#requestLookup(uid)
      }
      return
    }
    entry.skip = undefined
    const enrollment: PodEnrollment = { workload: decision.workload, netnsPath: entry.netnsPath }
    if (entry.enrolled !== undefined && JSON.stringify(entry.enrolled) === JSON.stringify(enrollment)) return
    const first = entry.enrolled === undefined
    entry.enrolled = enrollment
    this.#log.info({ uid, pod: key(pod), netns: enrollment.netnsPath }, first ? 'pod enrolled' : 'enrolled pod changed')
    this.#emit({ type: 'upsert', pod: enrollment })
  }

  #stopLooking(entry: Entry): void {
    clearTimeout(entry.timer)
    entry.timer = undefined
    entry.pending = false
    entry.attempts = 0
  }

  #requestLookup(uid: string): void {
    this.#resolveQueue.add(uid)
    // Before the first sync the lookup runs once everything is listed.
    if (this.#synced.isOpen) void this.#resolvePending()
  }

  // One lookup at a time, each for every pod queued so far: a /proc scan
  // costs the same for one pod as for fifty.
  async #resolvePending(): Promise<void> {
    while (this.#resolving !== undefined) await this.#resolving
    if (this.#resolveQueue.size === 0 || this.#closed) return
    const uids = [...this.#resolveQueue]
    this.#resolveQueue.clear()
    this.#resolving = this.#lookup(uids).finally(() => {
      this.#resolving = undefined
    })
    await this.#resolving
  }

  async #lookup(uids: string[]): Promise<void> {
    let found: Map<string, string>
    try {
      found = await this.#resolver.resolve(uids)
    } catch (err) {
      this.#log.error({ err, pods: uids.length }, 'looking up pod network namespaces failed')
      found = new Map()
    }
    if (this.#closed) return
    for (const uid of uids) {
      const entry = this.#entries.get(uid)
      if (entry === undefined || !entry.pending) continue
      const path = found.get(uid)
      if (path !== undefined) {
        this.#stopLooking(entry)
        entry.netnsPath = path
        entry.netnsFor = podAddresses(entry.pod).join(',')
        this.#evaluate(uid, entry)
        continue
      }
      entry.attempts += 1
      const pod = key(entry.pod)
      if (entry.attempts >= this.#retry.maxAttempts) {
        this.#stopLooking(entry)
        entry.gaveUp = true
        entry.skip = { uid, namespace: entry.pod.metadata?.namespace ?? '', name: entry.pod.metadata?.name ?? '', reason: 'netns-not-found', message: `pod ${pod}: network namespace not found after ${this.#retry.maxAttempts} lookups; waiting for the pod to change` }
        this.#log.error({ uid, pod, attempts: entry.attempts }, entry.skip.message)
        continue
      }
      const delay = Math.min(this.#retry.initialDelayMs * 2 ** (entry.attempts - 1), this.#retry.maxDelayMs)
      const log = entry.attempts === 1 ? this.#log.warn : this.#log.debug
      log({ uid, pod, attempts: entry.attempts, retryInMs: delay }, `network namespace of pod ${pod} not found yet; retrying`)
      entry.timer = setTimeout(() => {
        entry.timer = undefined
        this.#requestLookup(uid)
      }, delay)
    }
  }

  #emit(event: PodSourceEvent): void {
    if (this.#synced.isOpen) this.#subscribers.emit(event)
  }
}

function closedError(): AmbientError {
  return new AmbientError(CoreErrorCode.Closed, 'the Kubernetes pod source is closed')
}
