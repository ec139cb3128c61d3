import type { ComponentRegistry } from './component'
import { closeSync } from 'node:fs'
import {
  AmbientError,
  invalidArgument,
  silentLogger,
  type AbortOptions,
  type Logger,
  type PodEnrollment,
  type PodSource,
  type PodSourceEvent,
  type RegistryChange,
  type Workload,
  type WorkloadRegistry,
} from '@ambientkit/core'
import { connectSeqpacket, openNetns, type SeqpacketMessage, type SeqpacketSocket } from '@ambientkit/redirect'
import { IstioErrorCode } from './errors'
import { sleep } from './sleep'
import { decodeMessage, messageType } from './protos'

/** Options of {@link createZdsPodSource}. */
export interface ZdsPodSourceOptions {
  /** This node's name: the `node` of a pod istiod has not described yet. Required. */
  readonly nodeName: string
  /** istio-cni's socket (ztunnel's `INPOD_UDS`). Default `'/var/run/ztunnel/ztunnel.sock'`. */
  readonly path?: string
  /**
   * The registry the WDS client fills: a pod's workload is the one istiod
   * describes (`<clusterId>//Pod/<namespace>/<name>`), followed as it changes.
   * Default none: workloads only from what istio-cni says (no addresses).
   */
  readonly registry?: WorkloadRegistry
  /** The cluster id in istiod's workload uids (`CLUSTER_ID`). Default `'Kubernetes'`. */
  readonly clusterId?: string
  /** The trust domain of pods istiod has not described yet (`TRUST_DOMAIN`). Default `'cluster.local'`. */
  readonly trustDomain?: string
  /** Reconnection backoff, doubling from `initialMs` to `maxMs`. Default ztunnel's: 10 ms to 15 s. */
  readonly backoff?: { readonly initialMs?: number; readonly maxMs?: number }
  /** How often a pod whose proxy failed to start is tried again. Default 5000 ms (ztunnel's). */
  readonly retryIntervalMs?: number
  /** Most pods held (each holds a descriptor); an AddWorkload past it is answered with an error. Default 1024. */
  readonly maxPods?: number
  /**
   * A node proxy to register with (as `zds`): its `/healthz/ready` waits
   * until istio-cni's snapshot (SnapshotSent) is reconciled and every pod's
   * proxy runs (ztunnel's readiness), and its `/config_dump` shows
   * {@link ZdsPodSource.configDump}. Unregistered on `close()`. Default none.
   */
  readonly nodeProxy?: ComponentRegistry
  /** Default: silent. */
  readonly logger?: Logger
}

/** What `/config_dump` shows of the ZDS source. */
export interface ZdsConfigDump {
  readonly path: string
  readonly connected: boolean
  readonly snapshotReceived: boolean
  readonly ready: boolean
  readonly connections: number
  readonly lastError?: string
  readonly pods: ReadonlyArray<{
    /** The Kubernetes pod uid istio-cni names it by. */
    readonly uid: string
    readonly name: string
    readonly namespace: string
    readonly serviceAccount: string
    /** The workload uid it is enrolled under (istiod's). */
    readonly workloadUid: string
    /** `"<device>:<inode>"` of its network namespace. */
    readonly netns: string
    readonly state: 'starting' | 'running' | 'failed'
    readonly error?: string
  }>
}

/**
 * Pods handed over by istio-cni over ZDS, as a `PodSource` (`@ambientkit/core`): each pod
 * comes with an open handle on its network namespace (`netnsPath` is
 * `/proc/self/fd/<n>`, valid while the pod is listed) and `capture:
 * 'external'` (istio-cni applied the rules). Each event carries an `ack`
 * that the consumer must call once the pod's proxy is up (or down):
 * istio-cni gets its answer only then.
 */
export interface ZdsPodSource extends PodSource {
  /** True once istio-cni's snapshot is reconciled and no pod waits for its proxy: ztunnel's readiness. */
  ready(): boolean
  /** The pods held and the connection's state, for the node proxy's `/config_dump`. */
  configDump(): ZdsConfigDump
}

const HELLO = messageType('istio.workload.zds.ZdsHello')
const REQUEST = messageType('istio.workload.zds.WorkloadRequest')
const RESPONSE = messageType('istio.workload.zds.WorkloadResponse')
/** ztunnel and istio-cni both read into 1024-byte buffers. */
const MAX_MESSAGE = 1024

interface WorkloadRequest {
  payload?: 'add' | 'keep' | 'del' | 'snapshotSent'
  add?: { uid: string; workloadInfo: { name: string; namespace: string; serviceAccount: string } | null } | null
  keep?: { uid: string } | null
  del?: { uid: string } | null
}

interface Pod {
  uid: string
  info: { name: string; namespace: string; serviceAccount: string }
  workloadUid: string
  /** Our descriptor of the pod's network namespace; closed when the pod is released. */
  fd: number
  netnsId: string
  state: 'starting' | 'running' | 'failed'
  error?: string
  retry?: NodeJS.Timeout
}

/** A message that breaks ZDS: answered with an error, then the connection is reopened. */
class ProtocolError extends Error {}

/**
 * Creates a ZDS pod source: connects to istio-cni's socket once a consumer
 * watches, says hello, and turns AddWorkload, KeepWorkload, DelWorkload and
 * SnapshotSent into pod events, acknowledging each message exactly once,
 * in order, after its consumer has acted.
 *
 * @example
 * ```ts
 * import type { WorkloadRegistry } from '@ambientkit/core'
 * import { createNodeAgent } from '@ambientkit/agent'
 * import { createZdsPodSource } from '@ambientkit/istio'
 * import type { NodeProxy } from '@ambientkit/proxy'
 *
 * declare const registry: WorkloadRegistry // the one the WDS client fills
 * declare const nodeProxy: NodeProxy
 * const podSource = createZdsPodSource({ nodeName: 'node-1', registry })
 * const agent = createNodeAgent({ nodeProxy, podSource }) // starts and stops proxies only
 * await agent.start()
 * ```
 */
export function createZdsPodSource(options: ZdsPodSourceOptions): ZdsPodSource {
  if (typeof options?.nodeName !== 'string' || options.nodeName === '') throw invalidArgument('nodeName', options?.nodeName, 'a non-empty string')
  return new ZdsPodSourceImpl(options)
}

class ZdsPodSourceImpl implements ZdsPodSource {
  readonly #options: ZdsPodSourceOptions
  readonly #path: string
  readonly #log: Logger
  readonly #listeners = new Set<(event: PodSourceEvent) => void>()
  /** By Kubernetes pod uid. */
  readonly #pods = new Map<string, Pod>()
  /** Uids added or kept on this connection before SnapshotSent. */
  readonly #seen = new Set<string>()
  readonly #stop = new AbortController()
  #socket: SeqpacketSocket | undefined
  #running: Promise<void> | undefined
  #snapshotReceived = false
  #connections = 0
  #lastError: string | undefined
  #unsubscribe: (() => void) | undefined
  #unregister: (() => void) | undefined

  constructor(options: ZdsPodSourceOptions) {
    this.#options = options
    this.#path = options.path ?? '/var/run/ztunnel/ztunnel.sock'
    this.#log = (options.logger ?? silentLogger).child({ component: 'zds', path: this.#path })
    this.#unsubscribe = options.registry?.subscribe((change) => this.#onRegistryChange(change))
    this.#unregister = options.nodeProxy?.register({ name: 'zds', notReady: () => this.#notReady(), configDump: () => this.configDump() })
  }

  /** Why the node is not ready on account of this source, or `undefined`. */
  #notReady(): string | undefined {
    if (this.ready()) return undefined
    const why = this.#lastError === undefined ? '' : ` (last error: ${this.#lastError})`
    if (this.#socket === undefined) return `not connected to istio-cni at ${this.#path}${why}`
    if (!this.#snapshotReceived) return "waiting for istio-cni's snapshot (SnapshotSent)"
    const waiting = [...this.#pods.values()].filter((p) => p.state !== 'running').length
    return `${waiting} pod${waiting === 1 ? '' : 's'} waiting for their proxies${why}`
  }

  async list(_options?: AbortOptions): Promise<PodEnrollment[]> {
    return [...this.#pods.values()].filter((p) => p.state === 'running').map((p) => this.#enrollment(p))
  }

  subscribe(listener: (event: PodSourceEvent) => void, options: AbortOptions = {}): () => void {
    if (options.signal?.aborted === true) return () => {}
    this.#listeners.add(listener)
    const unsubscribe = (): void => {
      this.#listeners.delete(listener)
      options.signal?.removeEventListener('abort', unsubscribe)
    }
    options.signal?.addEventListener('abort', unsubscribe, { once: true })
    // Nobody to start proxies before the first subscriber: connect only then.
    if (!this.#stop.signal.aborted) this.#running ??= this.#run()
    return unsubscribe
  }

  ready(): boolean {
    return this.#socket !== undefined && this.#snapshotReceived && [...this.#pods.values()].every((p) => p.state === 'running')
  }

  #workload(pod: Pick<Pod, 'info' | 'workloadUid'>): Workload {
    const known = this.#options.registry?.workloadByUid(pod.workloadUid)
    if (known !== undefined) return known
    return {
      uid: pod.workloadUid,
      name: pod.info.name,
      namespace: pod.info.namespace,
      serviceAccount: pod.info.serviceAccount === '' ? 'default' : pod.info.serviceAccount,
      node: this.#options.nodeName,
      addresses: [],
      protocol: 'HBONE',
      labels: {},
      ...(this.#options.trustDomain === undefined ? {} : { trustDomain: this.#options.trustDomain }),
    }
  }

  #enrollment(pod: Pod): PodEnrollment {
    return { workload: this.#workload(pod), netnsPath: `/proc/self/fd/${pod.fd}`, capture: 'external' }
  }

  /** Sends an event to every consumer; resolves once each has acknowledged it, rejects with the first error. */
  #emit(make: (ack: (error?: Error) => void) => PodSourceEvent): Promise<void> {
    if (this.#listeners.size === 0) return Promise.reject(new Error('no consumer subscribes to the pod source'))
    return Promise.all(
      [...this.#listeners].map((listener) => new Promise<void>((resolve, reject) => {
        let settled = false
        const ack = (error?: Error): void => {
          if (settled) return
          settled = true
          if (error === undefined) resolve()
          else reject(error)
        }
        try {
          listener(make(ack))
        } catch (err) {
          ack(err as Error)
        }
      })),
    ).then(() => undefined)
  }

  /** istiod described (or changed) a pod we hold: its proxy gets the new workload. */
  #onRegistryChange(change: RegistryChange): void {
    if (change.type !== 'workload-added' && change.type !== 'workload-updated') return
    for (const pod of this.#pods.values()) {
      if (pod.workloadUid !== change.workload.uid || pod.state !== 'running') continue
      this.#emit((ack) => ({ type: 'upsert', pod: this.#enrollment(pod), ack })).catch((err: unknown) =>
        this.#log.warn({ err, uid: pod.uid }, 'updating a pod\'s workload failed'))
    }
  }

  async #run(): Promise<void> {
    const initial = this.#options.backoff?.initialMs ?? 10
    const max = this.#options.backoff?.maxMs ?? 15_000
    let backoff = initial
    while (!this.#stop.signal.aborted) {
      this.#connections++
      let socket: SeqpacketSocket
      try {
        socket = connectSeqpacket(this.#path)
        await socket.send(Buffer.from(HELLO.encode(HELLO.fromObject({ version: 1 })).finish()), { signal: this.#stop.signal })
      } catch (err) {
        this.#failed(err)
        backoff = Math.min(max, backoff * 2)
        await sleep(backoff, this.#stop.signal)
        continue
      }
      this.#socket = socket
      backoff = initial
      this.#log.info({}, 'connected to istio-cni')
      try {
        await this.#serve(socket)
      } catch (err) {
        if (!this.#stop.signal.aborted) this.#failed(err)
      } finally {
        this.#socket = undefined
        this.#snapshotReceived = false
        this.#seen.clear()
        await socket.close()
      }
      if (!this.#stop.signal.aborted) await sleep(backoff, this.#stop.signal)
    }
  }

  #failed(cause: unknown): void {
    const err = cause instanceof AmbientError && cause.code === IstioErrorCode.ZdsProtocol
      ? cause
      : new AmbientError(IstioErrorCode.ZdsSocket, `istio-cni's socket ${this.#path}: ${(cause as Error).message}`, {
        cause,
        details: { path: this.#path, errnoName: (cause as AmbientError).details?.errnoName },
      })
    this.#lastError = err.message
    this.#log.warn({ err }, 'ZDS connection failed; retrying')
  }

  /** Reads and answers messages one at a time until the connection ends. */
  async #serve(socket: SeqpacketSocket): Promise<void> {
    for (;;) {
      const message = await socket.receive({ maxBytes: MAX_MESSAGE, signal: this.#stop.signal })
      if (message.data.length === 0 && message.fds.length === 0) {
        this.#log.info({}, 'istio-cni closed the connection')
        return
      }
      let reply: string
      try {
        reply = await this.#handle(message)
      } catch (err) {
        // Refused, answered, and the connection reopened (ztunnel exits on a protocol error; a library does not).
        const reason = (err as Error).message
        await this.#ack(socket, reason)
        throw new AmbientError(IstioErrorCode.ZdsProtocol, `istio-cni broke the ZDS protocol: ${reason}`, { details: { reason } })
      }
      await this.#ack(socket, reply)
    }
  }

  #ack(socket: SeqpacketSocket, error: string): Promise<void> {
    // An error text longer than istio-cni's buffer would be cut: keep it within.
    const text = Buffer.byteLength(error) > MAX_MESSAGE - 16 ? `${error.slice(0, MAX_MESSAGE - 32)}...` : error
    // A success is an empty Ack (`0a 00`, as ztunnel sends), not one with an empty error.
    const ack = text === '' ? {} : { error: text }
    return socket.send(Buffer.from(RESPONSE.encode(RESPONSE.fromObject({ ack })).finish()), { signal: this.#stop.signal })
  }

  /** Carries a message out; resolves with the Ack's error text ('' for success), or throws a ProtocolError. */
  async #handle(message: SeqpacketMessage): Promise<string> {
    const fds = [...message.fds]
    const closeAll = (): void => {
      for (const fd of fds.splice(0)) closeSync(fd)
    }
    try {
      if (message.truncated || message.controlTruncated) throw new ProtocolError(`message truncated (more than ${MAX_MESSAGE} bytes or too many descriptors)`)
      let request: WorkloadRequest
      try {
        request = decodeMessage<WorkloadRequest>(REQUEST, message.data)
      } catch (err) {
        throw new ProtocolError(`cannot decode the message: ${(err as Error).message}`)
      }
      if (request.payload !== 'add' && fds.length > 0) throw new ProtocolError('Unexpected control message')
      switch (request.payload) {
        case 'add': {
          if (fds.length === 0) throw new ProtocolError('No control message')
          if (fds.length > 1) throw new ProtocolError('Expected 1 FD')
          const add = request.add!
          if (add.workloadInfo === null) throw new ProtocolError(`AddWorkload ${add.uid} without workload_info`)
          if (add.uid === '') throw new ProtocolError('AddWorkload without uid')
          return await this.#add(add.uid, add.workloadInfo, fds.pop()!)
        }
        case 'keep':
          if (this.#snapshotReceived) throw new ProtocolError(`KeepWorkload ${request.keep!.uid} after SnapshotSent`)
          this.#seen.add(request.keep!.uid)
          return ''
        case 'del':
          return await this.#del(request.del!.uid)
        case 'snapshotSent':
          if (this.#snapshotReceived) throw new ProtocolError('a second SnapshotSent')
          await this.#reconcile()
          return ''
        default:
          throw new ProtocolError('a message with no known payload')
      }
    } finally {
      closeAll()
    }
  }

  async #add(uid: string, info: Pod['info'], fd: number): Promise<string> {
    let netnsId: string
    try {
      // Entering it proves it is a network namespace we may enter; the id tells a new sandbox from the same one.
      const probe = openNetns(`/proc/self/fd/${fd}`)
      netnsId = probe.id
      await probe.close()
    } catch (err) {
      closeSync(fd)
      return `failure to start proxy: the descriptor is not a usable network namespace: ${(err as Error).message}`
    }
    if (!this.#snapshotReceived) this.#seen.add(uid)
    const existing = this.#pods.get(uid)
    if (existing !== undefined && existing.netnsId === netnsId) {
      // The same pod in the same sandbox (a reconnect's snapshot): nothing to start.
      closeSync(fd)
      if (existing.state === 'running') return ''
      return this.#start(existing)
    }
    if (existing !== undefined) await this.#release(existing)
    const maxPods = this.#options.maxPods ?? 1024
    if (this.#pods.size >= maxPods) {
      closeSync(fd)
      return `failure to start proxy: this node proxy holds its limit of ${maxPods} pods`
    }
    const workloadUid = `${this.#options.clusterId ?? 'Kubernetes'}//Pod/${info.namespace}/${info.name}`
    const pod: Pod = { uid, info, workloadUid, fd, netnsId, state: 'starting' }
    // Another pod uid under the same workload (a StatefulSet pod recreated before the old one's
    // DelWorkload): the consumer keys by workload uid, so the old one leaves it now.
    for (const other of this.#pods.values()) if (other.workloadUid === workloadUid) await this.#release(other)
    this.#pods.set(uid, pod)
    return this.#start(pod)
  }

  /** Asks the consumers to start the pod's proxy; on failure answers an error and tries again later, as ztunnel does. */
  async #start(pod: Pod): Promise<string> {
    clearTimeout(pod.retry)
    try {
      await this.#emit((ack) => ({ type: 'upsert', pod: this.#enrollment(pod), ack }))
      pod.state = 'running'
      delete pod.error
      return ''
    } catch (err) {
      pod.state = 'failed'
      pod.error = (err as Error).message
      const interval = this.#options.retryIntervalMs ?? 5000
      pod.retry = setTimeout(() => {
        if (this.#pods.get(pod.uid) === pod) void this.#start(pod)
      }, interval)
      this.#log.warn({ err, uid: pod.uid, retryInMs: interval }, 'failure to start a pod\'s proxy')
      return `failure to start proxy: ${pod.error}`
    }
  }

  async #del(uid: string): Promise<string> {
    if (!this.#snapshotReceived) {
      // Before the snapshot ends, a removal only takes the pod out of it: the reconcile releases it.
      this.#seen.delete(uid)
      return ''
    }
    const pod = this.#pods.get(uid)
    if (pod !== undefined) await this.#release(pod)
    return ''
  }

  /** Releases every pod neither added nor kept on this connection. */
  async #reconcile(): Promise<void> {
    for (const pod of [...this.#pods.values()]) if (!this.#seen.has(pod.uid)) await this.#release(pod)
    this.#snapshotReceived = true
    this.#seen.clear()
    this.#log.info({ pods: this.#pods.size }, 'istio-cni snapshot reconciled')
  }

  /** Stops the pod's proxy (its consumers acknowledge), then closes our handle on its namespace. */
  async #release(pod: Pod): Promise<void> {
    clearTimeout(pod.retry)
    this.#pods.delete(pod.uid)
    try {
      await this.#emit((ack) => ({ type: 'remove', uid: pod.workloadUid, ack }))
    } catch (err) {
      this.#log.warn({ err, uid: pod.uid }, 'stopping a pod\'s proxy failed')
    } finally {
      closeSync(pod.fd)
    }
  }

  configDump(): ZdsConfigDump {
    return {
      path: this.#path,
      connected: this.#socket !== undefined,
      snapshotReceived: this.#snapshotReceived,
      ready: this.ready(),
      connections: this.#connections,
      ...(this.#lastError === undefined ? {} : { lastError: this.#lastError }),
      pods: [...this.#pods.values()].map((p) => ({
        uid: p.uid,
        name: p.info.name,
        namespace: p.info.namespace,
        serviceAccount: p.info.serviceAccount,
        workloadUid: p.workloadUid,
        netns: p.netnsId,
        state: p.state,
        ...(p.error === undefined ? {} : { error: p.error }),
      })),
    }
  }

  /**
   * Disconnects and closes the handles it holds. The pods' proxies are the
   * consumer's: close the agent first (a listed pod's netnsPath stops being
   * valid here).
   */
  async close(): Promise<void> {
    this.#stop.abort()
    this.#unsubscribe?.()
    this.#unsubscribe = undefined
    this.#unregister?.()
    this.#unregister = undefined
    await this.#socket?.close()
    await this.#running
    for (const pod of this.#pods.values()) {
      clearTimeout(pod.retry)
      closeSync(pod.fd)
    }
    this.#pods.clear()
    this.#listeners.clear()
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}
