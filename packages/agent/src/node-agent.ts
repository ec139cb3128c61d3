import { readFile, rename, writeFile } from 'node:fs/promises'
import {
  silentLogger,
  workloadIdentity,
  type AbortOptions,
  type Closable,
  type Logger,
  type PodEnrollment,
  type PodSource,
  type PodSourceEvent,
  type Workload,
} from '@ambientkit/core'
import { applyCapture, openNetns, removeCapture, type CaptureConfig, type Netns } from '@ambientkit/redirect'
import type { NodeProxy } from '@ambientkit/proxy'
import type { IdentityManager } from '@ambientkit/identity'
import { createNetnsAttestor, createWorkloadApiServer, type WorkloadApiServer } from '@ambientkit/workload-api'

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
   * Serve the SPIFFE Workload API to enrolled pods: a caller is attested by
   * its network namespace and gets exactly its pod's identity, for as long
   * as the pod is enrolled. Default: not served.
   */
  readonly workloadApi?: NodeAgentWorkloadApi
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

/** Enrolls the pods of one node into the mesh and keeps them enrolled. */
export interface NodeAgent extends Closable {
  /**
   * Reconciles once with the pod source's list (capture and listeners for
   * every listed pod, none for the others), then follows its events.
   */
  start(options?: AbortOptions): Promise<ReconcileReport>
  /** Makes the node match the source's current list. */
  reconcile(options?: AbortOptions): Promise<ReconcileReport>
  /** UIDs of the pods enrolled now: a pod being removed is listed until its capture is gone. */
  enrolled(): string[]
  /**
   * Stops following the source and releases the netns handles. Enrolled pods
   * stay captured (fail closed): call {@link release} to undo. Close or drain
   * the node proxy first: its listeners use those handles.
   */
  close(): Promise<void>
  /** Removes every enrolled pod from the mesh (listeners, then capture), then closes. */
  release(): Promise<void>
}

interface Enrolled {
  workload: Workload
  netnsPath: string
  netns: Netns
}

/**
 * Creates a node agent: the enrollment lifecycle of Istio's in-pod mode.
 *
 * Add: open the pod's netns → apply capture (atomic, idempotent) → start the
 * workload's proxy listeners inside the netns → ready. Remove: the reverse,
 * listeners first, so the pod's traffic fails closed rather than bypassing
 * the mesh while it is released. Events for one pod run in order; events for
 * different pods run concurrently.
 */
export function createNodeAgent(options: NodeAgentOptions): NodeAgent {
  return new NodeAgentImpl(options)
}

class NodeAgentImpl implements NodeAgent {
  readonly #options: NodeAgentOptions
  readonly #log: Logger
  readonly #enrolled = new Map<string, Enrolled>()
  readonly #queues = new Map<string, Promise<unknown>>()
  #unwatch: (() => void) | undefined
  #workloadApi: WorkloadApiServer | undefined
  #closed = false
  /** State writes run one after another, each writing the state as it is when it runs. */
  #stateWrites: Promise<void> = Promise.resolve()

  constructor(options: NodeAgentOptions) {
    this.#options = options
    this.#log = (options.logger ?? silentLogger).child({ component: 'node-agent' })
  }

  async start(options: AbortOptions = {}): Promise<ReconcileReport> {
    const api = this.#options.workloadApi
    if (api !== undefined) {
      this.#workloadApi = await createWorkloadApiServer({
        socketPath: api.socketPath,
        manager: api.identities,
        attest: createNetnsAttestor(() => [...this.#enrolled.values()].map((e) => ({ netnsPath: e.netnsPath, identity: workloadIdentity(e.workload) }))),
        logger: this.#log,
      })
    }
    // Follow events from before the list, so nothing between the two is lost;
    // they queue behind the reconciliation of the same pod.
    this.#unwatch = this.#options.podSource.watch((event) => void this.#onEvent(event))
    return this.reconcile(options)
  }

  async reconcile(options: AbortOptions = {}): Promise<ReconcileReport> {
    const desired = await this.#options.podSource.list(options)
    const wanted = new Map(desired.map((p) => [p.workload.uid, p]))
    const stale = new Map<string, string>()
    for (const [uid, e] of this.#enrolled) if (!wanted.has(uid)) stale.set(uid, e.netnsPath)
    for (const [uid, path] of await this.#readState()) if (!wanted.has(uid) && !this.#enrolled.has(uid)) stale.set(uid, path)
    const enrolled: string[] = []
    const removed: string[] = []
    const failed: Array<{ uid: string; error: string }> = []
    await Promise.all([
      ...[...wanted.values()].map((pod) =>
        this.#serial(pod.workload.uid, () => this.#add(pod)).then(
          () => enrolled.push(pod.workload.uid),
          (err: Error) => failed.push({ uid: pod.workload.uid, error: err.message }),
        ),
      ),
      ...[...stale].map(([uid, path]) =>
        this.#serial(uid, () => this.#remove(uid, path)).then(
          () => removed.push(uid),
          (err: Error) => failed.push({ uid, error: err.message }),
        ),
      ),
    ])
    await this.#writeState()
    this.#log.info({ enrolled: enrolled.length, removed: removed.length, failed: failed.length }, 'reconciled')
    return { enrolled, removed, failed }
  }

  enrolled(): string[] {
    return [...this.#enrolled.keys()]
  }

  async #onEvent(event: PodSourceEvent): Promise<void> {
    if (this.#closed) return
    const uid = event.type === 'upsert' ? event.pod.workload.uid : event.uid
    try {
      if (event.type === 'upsert') await this.#serial(uid, () => this.#add(event.pod))
      else await this.#serial(uid, () => this.#remove(uid, this.#enrolled.get(uid)?.netnsPath))
      await this.#writeState()
    } catch (err) {
      this.#log.error({ err, uid, event: event.type }, 'enrollment change failed')
    }
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

  async #add(pod: PodEnrollment): Promise<void> {
    const { workload, netnsPath } = pod
    let entry = this.#enrolled.get(workload.uid)
    if (entry !== undefined && entry.netnsPath !== netnsPath) {
      // Same pod UID in a new sandbox: release the old one first.
      await this.#remove(workload.uid, entry.netnsPath)
      entry = undefined
    }
    const netns = entry?.netns ?? openNetns(netnsPath)
    try {
      await applyCapture(netns, this.#options.capture ?? {}, { backend: this.#options.backend ?? 'auto' })
      await this.#options.nodeProxy.addWorkload(workload, netns)
    } catch (err) {
      if (entry === undefined) await netns.close()
      throw err
    }
    this.#enrolled.set(workload.uid, { workload, netnsPath, netns })
    this.#workloadApi?.refresh()
    this.#log.info({ uid: workload.uid, workload: `${workload.namespace}/${workload.name}` }, 'pod enrolled')
  }

  async #remove(uid: string, netnsPath: string | undefined): Promise<void> {
    await this.#options.nodeProxy.removeWorkload(uid)
    const entry = this.#enrolled.get(uid)
    try {
      await this.#release(uid, entry?.netnsPath ?? netnsPath, entry?.netns)
    } finally {
      // Listed by enrolled() until its capture is gone, so that a caller waiting for the list sees a released pod.
      this.#enrolled.delete(uid)
      // Its apps lose their identity with the pod's enrollment.
      this.#workloadApi?.refresh()
    }
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
      await removeCapture(netns)
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

  #writeState(): Promise<void> {
    const file = this.#options.stateFile
    if (file === undefined) return Promise.resolve()
    const write = async (): Promise<void> => {
      const pods = Object.fromEntries([...this.#enrolled].map(([uid, e]) => [uid, e.netnsPath]))
      // Write then rename: a crash never leaves a half-written state file.
      await writeFile(`${file}.tmp`, `${JSON.stringify({ pods }, null, 2)}\n`)
      await rename(`${file}.tmp`, file)
    }
    this.#stateWrites = this.#stateWrites.catch(() => {}).then(write)
    return this.#stateWrites
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#unwatch?.()
    await this.#workloadApi?.close()
    await Promise.allSettled([...this.#queues.values()])
    await this.#stateWrites.catch(() => {})
    await Promise.all([...this.#enrolled.values()].map((e) => e.netns.close()))
  }

  async release(): Promise<void> {
    this.#unwatch?.()
    await Promise.allSettled([...this.#queues.values()])
    for (const [uid, entry] of [...this.#enrolled]) await this.#serial(uid, () => this.#remove(uid, entry.netnsPath))
    await this.#writeState()
    await this.close()
  }
}
