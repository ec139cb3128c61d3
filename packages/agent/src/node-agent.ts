import { readFile, rename, writeFile } from 'node:fs/promises'
import {
  AmbientError,
  CoreErrorCode,
  invalidArgument,
  silentLogger,
  throwIfAborted,
  workloadIdentity,
  type AbortOptions,
  type Logger,
  type LongLived,
  type Startable,
  type PodEnrollment,
  type PodSource,
  type PodSourceEvent,
  type Workload,
} from '@ambientkit/core'
import {
  applyCapture,
  applyProbeSnat,
  enableListenerHandover,
  inspectCapture,
  inspectProbeSnat,
  openNetns,
  removeCapture,
  removeProbeSnat,
  resolveCaptureConfig,
  watchRuleset,
  type CaptureConfig,
  type Netns,
  type ProbeSnatConfig,
  type ResolvedCaptureConfig,
  type RulesetWatch,
} from '@ambientkit/redirect'
import { createDnsProxy, type DnsMetrics, type DnsProxy, type DnsProxyOptions, type NodeProxy } from '@ambientkit/proxy'
import type { IdentityManager } from '@ambientkit/identity'
import { createNetnsAttestor, createWorkloadApiServer, type WorkloadApiServer } from '@ambientkit/workload-api'

/**
 * The DNS proxy of each pod, started when capture redirects DNS
 * (`capture.captureDns`): the options of `createDnsProxy` but those the
 * agent sets (the pod, its namespace, the port and mark from the capture
 * configuration, metrics on the node proxy's `/metrics`, the logger).
 */
export type NodeAgentDnsOptions = Omit<DnsProxyOptions, 'workload' | 'netns' | 'port' | 'mark' | 'ipv6' | 'metrics' | 'logger'>

/** Where and how the agent rewrites kubelet probes on the node (see `applyProbeSnat` of `@ambientkit/redirect`). */
export interface NodeAgentProbeOptions {
  /** The node's network namespace, where the kubelet runs: a path, a pid or a name. Default: the agent's own. */
  readonly netns?: string | number
  /** Only the sockets of this user (the kubelet's). Default: any socket of the node. */
  readonly sourceUid?: number
}

/** The SPIFFE Workload API the agent offers to the applications of its enrolled pods. */
export interface NodeAgentWorkloadApi {
  /**
   * The unix socket (one per node; its directory is shared with the pods: a
   * hostPath volume on Kubernetes, the machine's filesystem in the local
   * mesh). Apps use `SPIFFE_ENDPOINT_SOCKET=unix://<socketPath>`.
   */
  readonly socketPath: string
  /** Where the pods' SVIDs come from: the node proxy's manager, so apps and their proxy share them. */
  readonly identities: IdentityManager
}

/** Options of {@link createNodeAgent}. */
export interface NodeAgentOptions {
  /** The node proxy that runs the enrolled workloads' listeners. */
  readonly nodeProxy: NodeProxy
  /** Where the pods to capture come from (the local control plane, Kubernetes...). */
  readonly podSource: PodSource
  /** Capture rules for every pod. Default: Istio's in-pod defaults. */
  readonly capture?: CaptureConfig
  /** Rule backend. Default `'auto'` (nftables when `nft` works in the pod, else iptables). */
  readonly backend?: 'nftables' | 'iptables' | 'auto'
  /**
   * A file where the agent records which pods it captured (uid → netns
   * path), so that after a restart it can release pods that left the mesh
   * while it was down. Default: none (only pods the source still lists are reconciled).
   */
  readonly stateFile?: string
  /**
   * The DNS proxies: required when `capture.captureDns` is on (they need
   * `registry`; upstreams default to the agent's /etc/resolv.conf). Ignored otherwise.
   */
  readonly dns?: NodeAgentDnsOptions
  /**
   * The node-side rewrite of kubelet probes to enrolled pods (source
   * 169.254.7.127, the capture's probe address), which lets probes reach
   * the app whatever the inbound policy: kept with every enrolled pod's
   * addresses, removed by {@link NodeAgent.release}. Default `{}`: in the
   * agent's own namespace. `false`: none (something else, istio-cni for
   * one, installs it; without any, STRICT pods fail their probes).
   */
  readonly probes?: NodeAgentProbeOptions | false
  /**
   * Serve the SPIFFE Workload API to enrolled pods: a caller is attested by
   * its network namespace and gets exactly its pod's identity, for as long
   * as the pod is enrolled. Default: not served.
   */
  readonly workloadApi?: NodeAgentWorkloadApi
  /**
   * How often the agent compares every enrolled pod's capture (and the
   * node's probe rewrite) with its configuration and repairs what another
   * program changed, counting each repair in the node proxy's metrics
   * (`ambientkit_capture_drift_repairs_total{scope}`). Capture installed by
   * someone else (`capture: 'external'`) is theirs to repair. A change of
   * a pod's nf_tables ruleset (`watchRuleset`) has that pod checked 250 ms
   * later, without waiting for the interval. Default 30 000 ms; `0` never
   * checks, on a timer or on a change.
   */
  readonly repairIntervalMs?: number
  /** Default: silent. */
  readonly logger?: Logger
}

/** What a reconciliation did. */
export interface ReconcileReport {
  /** Pods enrolled (capture applied or verified, listeners up). */
  readonly enrolled: readonly string[]
  /** Pods released (listeners closed, capture removed). */
  readonly removed: readonly string[]
  /** Pods that could not be enrolled, with why. */
  readonly failed: ReadonlyArray<{ uid: string; error: string }>
}

/**
 * What the agent shows under `components['node-agent']` of the node proxy's
 * `/config_dump`.
 */
export interface NodeAgentState {
  /** Whether the first reconciliation ({@link NodeAgent.start}) has finished. */
  readonly reconciled: boolean
  readonly enrolled: number
  /** Pods the agent was asked to enroll and could not, with the last error: the node is not ready while there is one. */
  readonly failed: Readonly<Record<string, string>>
  /** State-file writes that failed (a full or read-only disk) since the agent started. */
  readonly stateWriteFailures: number
  /** Why the Workload API is not served, when it should be and could not start. */
  readonly workloadApiError?: string
}

/** How often a failing state file is reported in the log, at most. */
const FAILURE_REPORT_INTERVAL_MS = 60_000

/** Enrolls the pods of one node into the mesh and keeps them enrolled. */
export interface NodeAgent extends LongLived, Startable<ReconcileReport> {
  /**
   * Reconciles once with the pod source's list (capture and listeners for
   * every listed pod, none for the others), then follows its events. When
   * `signal` aborts first, it stops following the source and rejects with
   * `ERR_AMBIENT_ABORTED`; pods enrolled by then stay enrolled.
   */
  start(options?: AbortOptions): Promise<ReconcileReport>
  /**
   * Makes the node match the source's current list. `signal` stops it from
   * starting work on more pods; what is under way for a pod finishes.
   */
  reconcile(options?: AbortOptions): Promise<ReconcileReport>
  /** UIDs of the pods enrolled now: a pod being removed is listed until its capture is gone. */
  enrolled(): string[]
  /**
   * Whether the first reconciliation finished, the pods that failed to
   * enroll, and the disk writes that failed. Also served by the node
   * proxy (the agent registers with it as `node-agent`): under `components`
   * in `/config_dump`, and in `/healthz/ready`, which answers 503 until the
   * first reconciliation has finished and while a pod could not be enrolled.
   */
  state(): NodeAgentState
  /**
   * Stops following the source and releases the netns handles. Enrolled pods
   * stay captured (fail closed): call {@link release} to undo. Close or drain
   * the node proxy first: its listeners use those handles. Idempotent.
   */
  close(): Promise<void>
  /**
   * Removes every enrolled pod from the mesh (listeners, then capture), then
   * closes. When `signal` aborts, it stops releasing more pods, closes, and
   * rejects with `ERR_AMBIENT_ABORTED`; the pods not released stay captured.
   */
  release(options?: AbortOptions): Promise<void>
}

interface Enrolled {
  workload: Workload
  netnsPath: string
  netns: Netns
  /** Its DNS proxy, when capture redirects DNS. */
  dns?: DnsProxy
  /** Capture installed by someone else (istio-cni): never removed by the agent. */
  externalCapture: boolean
  /** Changes of its ruleset, which bring its drift check forward. */
  watch?: RulesetWatch
  /** The drift check a change scheduled, not started yet. */
  recheck?: NodeJS.Timeout
}

/** How long after a change of a pod's ruleset its capture is checked: a burst of changes (one `nft -f`) is one check. */
const RULESET_CHANGE_DEBOUNCE_MS = 250

/**
 * Creates a node agent: the enrollment lifecycle of Istio's in-pod mode.
 *
 * Add: open the pod's netns → add its addresses to the node's probe
 * rewrite → apply capture (atomic, idempotent) → start the workload's proxy
 * listeners inside the netns → with `captureDns`, start its DNS proxy →
 * ready. Remove: the reverse, listeners and DNS proxy first, so the pod's
 * traffic fails closed rather than bypassing the mesh while it is released.
 * Events for one pod run in order; events for different pods run
 * concurrently.
 *
 * @throws `ERR_AMBIENT_REDIRECT_INVALID_CONFIG` for a bad `capture`,
 * `ERR_AMBIENT_INVALID_ARGUMENT` for `captureDns` without `dns.registry`.
 */
export function createNodeAgent(options: NodeAgentOptions): NodeAgent {
  return new NodeAgentImpl(options)
}

class NodeAgentImpl implements NodeAgent {
  readonly #options: NodeAgentOptions
  readonly #capture: ResolvedCaptureConfig
  readonly #log: Logger
  readonly #enrolled = new Map<string, Enrolled>()
  readonly #queues = new Map<string, Promise<unknown>>()
  #unsubscribe: (() => void) | undefined
  #workloadApi: WorkloadApiServer | undefined
  #closing: Promise<void> | undefined
  /** State writes run one after another, each writing the state as it is when it runs. */
  #stateWrites: Promise<void> = Promise.resolve()
  readonly #dnsMetrics: DnsMetrics | undefined
  /** The addresses whose probes the node rewrites, per pod uid: enrolled pods and pods being enrolled. */
  readonly #probeTargets = new Map<string, readonly string[]>()
  #nodeNetns: Netns | undefined
  /** The rewrite being applied, and the next one, which takes every change made before it starts. */
  #probeSync: Promise<void> = Promise.resolve()
  #probeQueued: Promise<void> | undefined
  readonly #repairIntervalMs: number
  #repairTimer: NodeJS.Timeout | undefined
  /** The drift check under way, which close() waits for. */
  #repairing: Promise<void> = Promise.resolve()
  #reconciled = false
  /** Pods that could not be enrolled, with why: readiness fails while one is here. */
  readonly #failed = new Map<string, string>()
  #stateWriteFailures = 0
  #lastStateReport = Number.NEGATIVE_INFINITY
  #workloadApiError: string | undefined
  readonly #unregister: () => void

  constructor(options: NodeAgentOptions) {
    this.#options = options
    this.#capture = resolveCaptureConfig(options.capture ?? {})
    if (this.#capture.captureDns && typeof options.dns?.registry?.servicesByHostname !== 'function') {
      throw invalidArgument('dns.registry', options.dns?.registry, "the mesh's WorkloadRegistry (capture.captureDns is on: each pod gets a DNS proxy)")
    }
    if (options.probes !== undefined && options.probes !== false && (typeof options.probes !== 'object' || options.probes === null)) {
      throw invalidArgument('probes', options.probes, '{ netns?, sourceUid? } or false')
    }
    const interval = options.repairIntervalMs ?? 30_000
    if (!Number.isSafeInteger(interval) || interval < 0) throw invalidArgument('repairIntervalMs', interval, 'milliseconds, an integer >= 0 (0: never)')
    this.#repairIntervalMs = interval
    this.#dnsMetrics = this.#capture.captureDns ? options.nodeProxy.metrics.dns : undefined
    this.#log = (options.logger ?? silentLogger).child({ component: 'node-agent' })
    // Registered at once: a node whose admin server is up before the agent's first reconcile is not ready yet.
    this.#unregister = options.nodeProxy.register({ name: 'node-agent', notReady: () => this.#notReady(), configDump: () => this.state() })
  }

  #notReady(): string | undefined {
    if (!this.#reconciled) return 'first reconcile not finished'
    const reasons = [...this.#failed].map(([uid, error]) => `pod ${uid} not enrolled: ${error}`)
    if (this.#workloadApiError !== undefined) reasons.push(`Workload API not served: ${this.#workloadApiError}`)
    return reasons.length === 0 ? undefined : reasons.join('; ')
  }

  state(): NodeAgentState {
    return {
      reconciled: this.#reconciled,
      enrolled: this.#enrolled.size,
      failed: Object.fromEntries(this.#failed),
      stateWriteFailures: this.#stateWriteFailures,
      ...(this.#workloadApiError === undefined ? {} : { workloadApiError: this.#workloadApiError }),
    }
  }

  async start(options: AbortOptions = {}): Promise<ReconcileReport> {
    this.#checkOpen('start')
    throwIfAborted(options.signal, 'start')
    const api = this.#options.workloadApi
    if (api !== undefined) {
      try {
        this.#workloadApi = await createWorkloadApiServer({
          socketPath: api.socketPath,
          manager: api.identities,
          attest: createNetnsAttestor(() => [...this.#enrolled.values()].map((e) => ({ netnsPath: e.netnsPath, identity: workloadIdentity(e.workload) }))),
          logger: this.#log,
        })
      } catch (err) {
        // Its socket's directory full or read-only: the pods' traffic is still the agent's to capture and proxy; readiness says what is missing.
        this.#workloadApiError = (err as Error).message
        this.#log.error({ err, socketPath: api.socketPath }, 'cannot serve the Workload API; enrolling pods without it')
      }
    }
    // Follow events from before the list, so nothing between the two is lost;
    // they queue behind the reconciliation of the same pod.
    this.#unsubscribe = this.#options.podSource.subscribe((event) => void this.#onEvent(event))
    let report: ReconcileReport
    try {
      report = await this.reconcile(options)
    } catch (err) {
      this.#unsubscribe()
      throw err
    }
    this.#scheduleRepair()
    return report
  }

  /** The next drift check, `repairIntervalMs` after the last one ended. */
  #scheduleRepair(): void {
    if (this.#repairIntervalMs === 0 || this.#closing !== undefined) return
    this.#repairTimer = setTimeout(() => {
      this.#repairing = this.#repairDrift().finally(() => this.#scheduleRepair())
    }, this.#repairIntervalMs)
    this.#repairTimer.unref()
  }

  /**
   * Compares every enrolled pod's capture and the node's probe rewrite with
   * what they should be, and applies them again where they differ. Each
   * pod's check runs in its queue, so it never races its enrollment or
   * removal. Failures are logged: the next check tries again.
   */
  async #repairDrift(): Promise<void> {
    const metrics = this.#options.nodeProxy.metrics
    const pods = [...this.#enrolled].filter(([, e]) => !e.externalCapture)
    await Promise.all(pods.map(([uid]) => this.#repairPod(uid)))
    if (this.#options.probes === false || this.#closing !== undefined) return
    try {
      await this.#probeSync
      const config = this.#probeConfig()
      const { status, differences } = await inspectProbeSnat(this.#node(), { config })
      const expected = config.podAddresses.length === 0 ? 'absent' : 'present'
      // A pod enrolled or removed meanwhile has brought its own rewrite.
      if (status === expected || JSON.stringify(config) !== JSON.stringify(this.#probeConfig())) return
      this.#log.warn({ differences }, 'the probe rewrite on the node drifted: applying it again')
      await this.#syncProbes()
      metrics.captureDriftRepaired?.({ scope: 'node' })
    } catch (err) {
      this.#log.error({ err }, 'cannot check the probe rewrite on the node')
    }
  }

  /** Checks one pod's capture, in its queue, and applies it again if it drifted. Never throws: a failure is logged. */
  #repairPod(uid: string): Promise<void> {
    const config = this.#options.capture ?? {}
    return this.#serial(uid, async () => {
      const entry = this.#enrolled.get(uid)
      if (entry === undefined || entry.externalCapture || this.#closing !== undefined) return
      const { status, differences } = await inspectCapture(entry.netns, { config })
      if (status === 'present') return
      this.#log.warn({ uid, differences }, 'capture drifted: applying it again')
      await applyCapture(entry.netns, config, { backend: this.#options.backend ?? 'auto' })
      this.#options.nodeProxy.metrics.captureDriftRepaired?.({ scope: 'pod' })
    }).catch((err: unknown) => this.#log.error({ err, uid }, 'cannot check or repair the capture of a pod'))
  }

  /**
   * Watches a pod's ruleset so that a change (by another program, or a
   * repair of ours, which then checks clean) is checked within
   * {@link RULESET_CHANGE_DEBOUNCE_MS} rather than at the next interval.
   * Where the namespace offers no watch, the interval alone finds drift.
   */
  #watchRuleset(uid: string, netns: Netns): RulesetWatch | undefined {
    if (this.#repairIntervalMs === 0) return undefined
    try {
      return watchRuleset(netns, () => {
        const entry = this.#enrolled.get(uid)
        if (entry === undefined || entry.recheck !== undefined || this.#closing !== undefined) return
        entry.recheck = setTimeout(() => {
          entry.recheck = undefined
          void this.#repairPod(uid)
        }, RULESET_CHANGE_DEBOUNCE_MS).unref()
      })
    } catch (err) {
      this.#log.warn({ err, uid }, 'cannot watch the ruleset of a pod: its drift is found by the interval only')
      return undefined
    }
  }

  /** Stops a pod's ruleset watch and the check it scheduled. */
  #unwatch(entry: Enrolled | undefined): void {
    entry?.watch?.close()
    clearTimeout(entry?.recheck)
  }

  #checkOpen(what: string): void {
    if (this.#closing !== undefined) throw new AmbientError(CoreErrorCode.Closed, `${what}: the node agent is closed`)
  }

  async reconcile(options: AbortOptions = {}): Promise<ReconcileReport> {
    this.#checkOpen('reconcile')
    const signal = options.signal
    const desired = await this.#options.podSource.list(options)
    const wanted = new Map(desired.map((p) => [p.workload.uid, p]))
    const stale = new Map<string, string>()
    for (const [uid, e] of this.#enrolled) if (!wanted.has(uid)) stale.set(uid, e.netnsPath)
    for (const [uid, path] of await this.#readState()) if (!wanted.has(uid) && !this.#enrolled.has(uid)) stale.set(uid, path)
    const enrolled: string[] = []
    const removed: string[] = []
    const failed: Array<{ uid: string; error: string }> = []
    // Work not yet started for a pod is skipped once the signal aborts; work under way finishes.
    const unlessAborted = <T>(fn: () => Promise<T>) => (): Promise<T> => {
      throwIfAborted(signal, 'reconcile')
      return fn()
    }
    await Promise.all([
      ...[...wanted.values()].map((pod) =>
        this.#serial(pod.workload.uid, unlessAborted(() => this.#add(pod, signal))).then(
          () => enrolled.push(pod.workload.uid),
          (err: Error) => {
            // Not a pod that failed: one the signal kept from being tried.
            if (signal?.aborted !== true) this.#failed.set(pod.workload.uid, err.message)
            failed.push({ uid: pod.workload.uid, error: err.message })
          },
        ),
      ),
      ...[...stale].map(([uid, path]) =>
        this.#serial(uid, unlessAborted(() => this.#remove(uid, path))).then(
          () => removed.push(uid),
          (err: Error) => failed.push({ uid, error: err.message }),
        ),
      ),
    ])
    for (const uid of this.#failed.keys()) if (!wanted.has(uid)) this.#failed.delete(uid)
    await this.#writeState()
    // Also with no pod to change: the node then holds exactly the enrolled pods' rewrite, whatever an earlier agent left.
    await this.#syncProbes()
    this.#log.info({ enrolled: enrolled.length, removed: removed.length, failed: failed.length }, 'reconciled')
    throwIfAborted(signal, 'reconcile')
    this.#reconciled = true
    return { enrolled, removed, failed }
  }

  enrolled(): string[] {
    return [...this.#enrolled.keys()]
  }

  async #onEvent(event: PodSourceEvent): Promise<void> {
    if (this.#closing !== undefined) {
      event.ack?.(new AmbientError(CoreErrorCode.Closed, 'the node agent is closed'))
      return
    }
    const uid = event.type === 'upsert' ? event.pod.workload.uid : event.uid
    try {
      if (event.type === 'upsert') await this.#serial(uid, () => this.#add(event.pod))
      else await this.#serial(uid, () => this.#remove(uid, this.#enrolled.get(uid)?.netnsPath))
    } catch (err) {
      this.#log.error({ err, uid, event: event.type }, 'enrollment change failed')
      if (event.type === 'upsert') this.#failed.set(uid, (err as Error).message)
      event.ack?.(err as Error)
      return
    }
    // The proxy is up (or gone): what a source that confirms changes waits for.
    event.ack?.()
    await this.#writeState()
  }

  /** Runs `fn` after every earlier operation on the same pod. */
  #serial<T>(uid: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#queues.get(uid) ?? Promise.resolve()
    const next = previous.catch(() => {}).then(fn)
    this.#queues.set(uid, next)
    void next.finally(() => {
      if (this.#queues.get(uid) === next) this.#queues.delete(uid)
    }).catch(() => {})
    return next
  }

  async #add(pod: PodEnrollment, signal?: AbortSignal): Promise<void> {
    const { workload, netnsPath } = pod
    const externalCapture = pod.capture === 'external'
    let entry = this.#enrolled.get(workload.uid)
    if (entry !== undefined && entry.netnsPath !== netnsPath) {
      // Same pod UID in a new sandbox: release the old one first.
      await this.#remove(workload.uid, entry.netnsPath)
      entry = undefined
    }
    const netns = entry?.netns ?? openNetns(netnsPath)
    try {
      if (!externalCapture) {
        // Probes are rewritten before capture takes them, so none is refused in between. External capture (istio-cni) rewrites its own.
        this.#probeTargets.set(workload.uid, workload.addresses.filter((address) => this.#capture.ipv6 || !address.includes(':')))
        await this.#syncProbes()
        await applyCapture(netns, this.#options.capture ?? {}, { backend: this.#options.backend ?? 'auto', signal })
      } else {
        // What applyCapture sets: the next agent process (an upgrade) takes over the listeners without a reset.
        enableListenerHandover(netns)
      }
      await this.#options.nodeProxy.addWorkload(workload, netns)
    } catch (err) {
      if (entry === undefined) {
        this.#probeTargets.delete(workload.uid)
        await netns.close()
      }
      throw err
    }
    const enrolled: Enrolled = { workload, netnsPath, netns, dns: entry?.dns, externalCapture }
    if (externalCapture) this.#unwatch(entry)
    else enrolled.watch = entry?.watch ?? this.#watchRuleset(workload.uid, netns)
    this.#enrolled.set(workload.uid, enrolled)
    this.#failed.delete(workload.uid)
    // Enrolled from here: a DNS proxy that cannot start leaves the pod's DNS failing closed, reported, and tried again on its next event.
    if (this.#capture.captureDns && enrolled.dns === undefined) enrolled.dns = await this.#startDns(workload, netns)
    this.#workloadApi?.refresh()
    this.#log.info({ uid: workload.uid, workload: `${workload.namespace}/${workload.name}` }, 'pod enrolled')
  }

  #startDns(workload: Workload, netns: Netns): Promise<DnsProxy> {
    return createDnsProxy({
      ...this.#options.dns!,
      workload,
      netns,
      port: this.#capture.dnsPort,
      mark: this.#capture.proxyMark,
      // Without IPv6 capture no DNS is redirected to ::1.
      ...(this.#capture.ipv6 ? {} : { ipv6: false }),
      metrics: this.#dnsMetrics,
      logger: this.#options.logger,
    })
  }

  async #remove(uid: string, netnsPath: string | undefined): Promise<void> {
    await this.#options.nodeProxy.removeWorkload(uid)
    const entry = this.#enrolled.get(uid)
    // Removing capture is a change of its own ruleset, not drift.
    this.#unwatch(entry)
    try {
      await entry?.dns?.close()
      if (entry?.externalCapture === true) await entry.netns.close()
      else await this.#release(uid, entry?.netnsPath ?? netnsPath, entry?.netns)
    } finally {
      // Listed by enrolled() until its capture is gone, so that a caller waiting for the list sees a released pod.
      this.#enrolled.delete(uid)
      this.#failed.delete(uid)
      // Its apps lose their identity with the pod's enrollment.
      this.#workloadApi?.refresh()
    }
    if (this.#probeTargets.delete(uid)) await this.#syncProbes()
  }

  /**
   * Makes the node's probe rewrite cover exactly the pods of
   * `#probeTargets`. Calls while one is applied share the next one, which
   * reads the targets when it starts. A failure is logged, never thrown:
   * without the rewrite probes fail, but enrolling a pod must not.
   */
  #syncProbes(): Promise<void> {
    const probes = this.#options.probes
    if (probes === false || this.#closing !== undefined) return Promise.resolve()
    this.#probeQueued ??= this.#probeSync.then(async () => {
      this.#probeQueued = undefined
      try {
        const config = this.#probeConfig()
        // No pod to rewrite probes for: the node holds nothing of ours (not an empty table).
        if (config.podAddresses.length === 0) await removeProbeSnat(this.#node())
        else await applyProbeSnat(this.#node(), config, { backend: this.#options.backend ?? 'auto' })
      } catch (err) {
        this.#log.error({ err, pods: this.#probeTargets.size }, 'cannot rewrite kubelet probes on the node: probes to captured pods may fail')
      }
    })
    this.#probeSync = this.#probeQueued
    return this.#probeQueued
  }

  /** The probe rewrite the node should hold now: every enrolled pod's addresses. */
  #probeConfig(): ProbeSnatConfig & { readonly podAddresses: readonly string[] } {
    const probes = this.#options.probes
    return {
      podAddresses: [...new Set([...this.#probeTargets.values()].flat())],
      probeAddressIpv4: this.#capture.probeAddressIpv4,
      probeAddressIpv6: this.#capture.probeAddressIpv6,
      ipv6: this.#capture.ipv6,
      ...(probes === false || probes?.sourceUid === undefined ? {} : { sourceUid: probes.sourceUid }),
    }
  }

  /** The node's network namespace, where the probe rewrite lives; opened on first use. */
  #node(): Netns {
    const probes = this.#options.probes
    this.#nodeNetns ??= openNetns((probes === false ? undefined : probes?.netns) ?? '/proc/self/ns/net')
    return this.#nodeNetns
  }

  async #release(uid: string, path: string | undefined, open: Netns | undefined): Promise<void> {
    if (path === undefined) return
    let netns = open
    try {
      netns ??= openNetns(path)
    } catch (err) {
      // The pod (and its namespace) is already gone: nothing left to undo.
      this.#log.debug({ err, uid, path }, 'pod netns gone; nothing to release')
      return
    }
    try {
      // The agent's configuration: a custom mark, mask or table finds its ip rule and route.
      await removeCapture(netns, { config: this.#options.capture ?? {} })
    } finally {
      await netns.close()
    }
    this.#log.info({ uid }, 'pod released')
  }

  async #readState(): Promise<Map<string, string>> {
    const file = this.#options.stateFile
    if (file === undefined) return new Map()
    try {
      const parsed = JSON.parse(await readFile(file, 'utf8')) as { pods?: Record<string, string> }
      return new Map(Object.entries(parsed.pods ?? {}))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.#log.warn({ err, file }, 'ignoring unreadable state file')
      return new Map()
    }
  }

  /**
   * Records the enrolled pods. Never rejects: a disk that refuses the write
   * (full, read-only) costs only the release, after a restart, of pods that
   * left meanwhile; the failure is counted ({@link NodeAgentState}) and
   * logged at most once a minute.
   */
  #writeState(): Promise<void> {
    const file = this.#options.stateFile
    if (file === undefined) return Promise.resolve()
    const write = async (): Promise<void> => {
      // Only the pods whose capture is the agent's to remove after a restart.
      const pods = Object.fromEntries([...this.#enrolled].filter(([, e]) => !e.externalCapture).map(([uid, e]) => [uid, e.netnsPath]))
      try {
        // Write then rename: a crash never leaves a half-written state file.
        await writeFile(`${file}.tmp`, `${JSON.stringify({ pods }, null, 2)}\n`)
        await rename(`${file}.tmp`, file)
      } catch (err) {
        this.#stateWriteFailures++
        this.#options.nodeProxy.metrics.writeFailed?.({ file: 'state' })
        const now = performance.now()
        if (now - this.#lastStateReport < FAILURE_REPORT_INTERVAL_MS) return
        this.#lastStateReport = now
        this.#log.error({ err, file, failures: this.#stateWriteFailures }, 'cannot write the state file; counting further failures and reporting them at most once a minute')
      }
    }
    this.#stateWrites = this.#stateWrites.then(write)
    return this.#stateWrites
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#unsubscribe?.()
      clearTimeout(this.#repairTimer)
      for (const entry of this.#enrolled.values()) this.#unwatch(entry)
      this.#unregister()
      await this.#workloadApi?.close()
      await this.#repairing
      await Promise.allSettled([...this.#queues.values()])
      await this.#stateWrites
      await this.#probeSync
      // The DNS proxies go with the agent, like the node proxy's listeners: captured pods' DNS fails closed.
      await Promise.all([...this.#enrolled.values()].map((e) => e.dns?.close()))
      await Promise.all([...this.#enrolled.values()].map((e) => e.netns.close()))
      await this.#nodeNetns?.close()
    })()
    return this.#closing
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }

  async release(options: AbortOptions = {}): Promise<void> {
    this.#checkOpen('release')
    this.#unsubscribe?.()
    try {
      await Promise.allSettled([...this.#queues.values()])
      for (const [uid, entry] of [...this.#enrolled]) {
        throwIfAborted(options.signal, 'release')
        await this.#serial(uid, () => this.#remove(uid, entry.netnsPath))
      }
    } finally {
      await this.#writeState()
      await this.#probeSync
      if (this.#options.probes !== false) {
        try {
          await removeProbeSnat(this.#node())
        } catch (err) {
          this.#log.error({ err }, 'cannot remove the probe rewrite from the node')
        }
      }
      await this.close()
    }
  }
}
