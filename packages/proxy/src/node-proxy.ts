import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import {
  ADMIN_PORT,
  AmbientError,
  invalidArgument,
  silentLogger,
  throwIfAborted,
  workloadIdentity,
  type AbortOptions,
  type Closable,
  type Logger,
  type NetnsSockets,
  type PolicyStore,
  type SocketAddress,
  type Workload,
  type WorkloadRegistry,
} from '@ambientkit/core'
import type { IdentityManager } from '@ambientkit/identity'
import type { AccessLogEntry } from './access-log'
import { HboneErrorCode } from './hbone/errors'
import { nativeHboneThreads } from './hbone/native'
import { createProxyMetrics, promClientAvailable, type ProxyMetrics } from './metrics'
import { observeConnections, type ConnectionObserver } from './telemetry'
import type { HboneTransport } from './transport/contract'
import { createSameNodeTransport } from './transport/same-node'
import { createWorkloadProxy, transportFor, type DrainOptions, type WorkloadProxy, type WorkloadProxyOptions } from './workload/workload-proxy'

/** Options every workload proxy of a node shares (see {@link WorkloadProxyOptions}). */
export type WorkloadProxyDefaults = Pick<
  WorkloadProxyOptions,
  'outboundPolicy' | 'inboundPlaintext' | 'preserveSourceAddress' | 'ports' | 'windows' | 'connectTimeout' | 'dataPath' | 'transport'
>

/** Options of {@link createNodeProxy}. */
export interface NodeProxyOptions {
  /** This node's name (in logs, metrics and `/config_dump`). */
  readonly nodeName: string
  /** The mesh's workloads and services. */
  readonly registry: WorkloadRegistry
  /** One identity manager for every workload on the node: SVIDs per service account. */
  readonly identities: IdentityManager
  /** The authorization policies in force. */
  readonly policies: PolicyStore
  /** Settings for every workload proxy (`dataPath` among them). Default: Istio's ports, passthrough, permissive plaintext, the native data path when its addon is built. */
  readonly workloadDefaults?: WorkloadProxyDefaults
  /**
   * The admin HTTP server (`/healthz/ready`, `/metrics`, `/config_dump`),
   * on the proxy process's own network namespace. Default `{ host: '127.0.0.1', port: 15021 }`;
   * `false` for none. On a node address (`host: '::'`), readiness and
   * metrics answer everyone, `/config_dump` only loopback peers.
   */
  readonly admin?: NodeProxyAdminOptions | false
  /**
   * Called with every connection's access-log entry. Default: one `info`
   * log line per connection. One that throws (a full disk) is caught,
   * counted and reported at most once a minute.
   */
  readonly accessLog?: (entry: AccessLogEntry) => void
  /**
   * Where connections, denials and failed handshakes are counted. Default:
   * {@link createProxyMetrics} (Prometheus, served on `/metrics`) when its
   * optional peer `prom-client` is installed; without it, nothing is
   * counted and `/metrics` says how to get it (one warning line at start).
   */
  readonly metrics?: ProxyMetrics
  /**
   * `true`: connections between two workloads of this node skip HBONE; the
   * destination's proxy authorizes them with the source's identity and the
   * sockets are spliced in-process (the same-node transport,
   * `createSameNodeTransport`, in front of the node's transport).
   * Default `false`: they go through HBONE like any other, so every mesh
   * connection looks the same on the wire, in metrics and in the access log.
   */
  readonly sameNodeFastPath?: boolean
  /** Default: silent. */
  readonly logger?: Logger
}

/** Where the node proxy's admin server listens, and to whom it shows the configuration. */
export interface NodeProxyAdminOptions {
  /** Default `'127.0.0.1'`. `'::'` (or `'0.0.0.0'`) serves readiness and metrics on the node's addresses, for the kubelet and Prometheus. */
  readonly host?: string
  /** Default 15021. */
  readonly port?: number
  /**
   * Serve `/config_dump` (workloads, addresses, identities, policies), and
   * the reasons `/healthz/ready` gives, to every peer that reaches the
   * server. Default `false`: only to loopback peers (127.0.0.0/8, ::1);
   * any other gets 403 for the first and a bare `not ready` for the other,
   * so a pod that can reach the node's readiness port cannot read the
   * node's configuration.
   */
  readonly exposeConfigDump?: boolean
}

/**
 * Something besides the workload proxies that the node's readiness and
 * `/config_dump` depend on: the agent's first reconcile, a WDS stream, a
 * ZDS snapshot. Registered with {@link NodeProxy.register}.
 */
export interface NodeProxyComponent {
  /** Its key under `components` in `/config_dump`, and its name in `/healthz/ready`'s answer. Unique per node proxy. */
  readonly name: string
  /** Why it is not ready yet, or `undefined` once it is. Absent: always ready. */
  notReady?(): string | undefined
  /** What `/config_dump` shows of it (JSON-serialisable). Absent: nothing but its readiness. */
  configDump?(): unknown
}

/** One workload enrolled in a node proxy. */
export interface NodeProxyEnrollment {
  readonly workload: Workload
  readonly netns: NetnsSockets
}

/** The proxy of every captured pod on one node. */
export interface NodeProxy extends Closable, AsyncDisposable {
  /**
   * Starts the workload's proxy inside `netns` (listeners 15001, 15006,
   * 15008). Adding a workload already enrolled in the same netns keeps its
   * running proxy (and resolves with it), updated to the new version of the
   * workload (labels take effect at once, established connections are
   * authorized again) unless its identity or addresses changed, which
   * restart it; in another netns (the pod was recreated) the old proxy is
   * closed first. An aborted `signal` gives up (a proxy it started meanwhile is closed).
   */
  addWorkload(workload: Workload, netns: NetnsSockets, options?: AbortOptions): Promise<WorkloadProxy>
  /** Closes the workload's listeners and connections. False if it was not enrolled. */
  removeWorkload(uid: string): Promise<boolean>
  /**
   * Enrolls exactly `enrollments`: adds the missing, removes the others.
   * Rejects with `ERR_AMBIENT_PROXY_WORKLOADS_FAILED` (each failure in
   * `details.failures`) when some could not start; the others run.
   */
  replaceAll(enrollments: readonly NodeProxyEnrollment[]): Promise<void>
  /** The enrolled workloads. */
  workloads(): Workload[]
  /** True when every enrolled workload has its listeners up and every registered component is ready. */
  ready(): boolean
  /**
   * Adds a component to readiness and `/config_dump`; returns the function
   * that removes it. Throws `ERR_AMBIENT_INVALID_ARGUMENT` for a name
   * already registered.
   */
  register(component: NodeProxyComponent): () => void
  readonly metrics: ProxyMetrics
  /** Where the admin server listens, once {@link start} resolved. */
  adminAddress(): SocketAddress | undefined
  /** What `/config_dump` serves. */
  configDump(): NodeProxyConfigDump
  /** The transport carrying its workloads' tunnels (its name is in `/config_dump`). */
  readonly transport: HboneTransport
  /** Starts the admin server. */
  start(options?: AbortOptions): Promise<void>
  /** Stops accepting everywhere, lets connections finish until `deadline` ms (default 5000), then closes. */
  drain(options?: DrainOptions): Promise<void>
  close(): Promise<void>
}

/** The node proxy's state, as `/config_dump` serves it. */
export interface NodeProxyConfigDump {
  readonly node: string
  readonly workloads: ReadonlyArray<{
    uid: string
    name: string
    namespace: string
    identity: string
    addresses: readonly string[]
    netns: string
    state: 'starting' | 'ready' | 'failed'
    error?: string
    /** The transport carrying its tunnels, once its proxy runs. */
    transport?: string
    connections: number
    hboneSessions: { outbound: number; inbound: number }
  }>
  /** The native data path's threads in this process, when the addon is built (`nativeHboneThreads()`). */
  readonly hboneThreads?: number
  readonly identities: ReadonlyArray<{ id: string; notAfter?: string }>
  readonly policies: ReadonlyArray<{ namespace: string; name: string; action: string; scope: string }>
  readonly registry: { workloads: number; services: number }
  /** The registered components, by name: whether each is ready, and what it shows. */
  readonly components: Readonly<Record<string, { ready: boolean; notReady?: string; state?: unknown }>>
}

interface Slot {
  workload: Workload
  netns: NetnsSockets
  state: 'starting' | 'ready' | 'failed'
  error?: Error
  proxy?: WorkloadProxy
  /** The last operation on this uid; the next one waits for it. */
  pending: Promise<unknown>
}

/** Creates a node proxy. Call {@link NodeProxy.start} to open its admin server. */
export function createNodeProxy(options: NodeProxyOptions): NodeProxy {
  if (typeof options.nodeName !== 'string' || options.nodeName === '') throw invalidArgument('nodeName', options.nodeName, 'a non-empty string')
  return new NodeProxyImpl(options)
}

class NodeProxyImpl implements NodeProxy {
  readonly metrics: ProxyMetrics
  readonly transport: HboneTransport
  readonly #options: NodeProxyOptions
  readonly #log: Logger
  readonly #slots = new Map<string, Slot>()
  readonly #components = new Map<string, NodeProxyComponent>()
  readonly #observer: ConnectionObserver
  #admin: Server | undefined
  #adminAddress: SocketAddress | undefined
  #closing: Promise<void> | undefined

  constructor(options: NodeProxyOptions) {
    this.#options = options
    this.#log = (options.logger ?? silentLogger).child({ node: options.nodeName })
    if (options.metrics !== undefined) this.metrics = options.metrics
    else if (promClientAvailable()) this.metrics = createProxyMetrics()
    else {
      this.#log.warn('prom-client is not installed: no metrics are counted (npm install prom-client to serve them on /metrics)')
      this.metrics = NO_METRICS
    }
    const defaults = options.workloadDefaults ?? {}
    const wire = defaults.transport ?? transportFor(defaults.dataPath)
    this.transport = options.sameNodeFastPath === true ? createSameNodeTransport({ fallback: wire }) : wire
    // Every workload proxy of the node publishes its connections under this node proxy.
    this.#observer = observeConnections({
      telemetry: this,
      metrics: this.metrics,
      ...(options.accessLog === undefined ? {} : { accessLog: options.accessLog }),
      logger: this.#log,
    })
  }

  async start(options: AbortOptions = {}): Promise<void> {
    throwIfAborted(options.signal, 'node proxy start')
    if (this.#options.admin === false || this.#admin !== undefined) return
    const host = this.#options.admin?.host ?? '127.0.0.1'
    const port = this.#options.admin?.port ?? ADMIN_PORT
    const server = createServer((req, res) => void this.#serveAdmin(req, res))
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      // reusePort: a new agent process (an upgrade) serves next to this one (Node >= 22.12; earlier ones ignore it).
      server.listen({ port, host, reusePort: true }, () => {
        server.off('error', reject)
        resolve()
      })
    })
    this.#admin = server
    const address = server.address()
    if (address !== null && typeof address === 'object') this.#adminAddress = { address: address.address, port: address.port, family: address.family === 'IPv6' ? 6 : 4 }
  }

  adminAddress(): SocketAddress | undefined {
    return this.#adminAddress
  }

  addWorkload(workload: Workload, netns: NetnsSockets, options: AbortOptions = {}): Promise<WorkloadProxy> {
    const previous = this.#slots.get(workload.uid)
    const wait = previous?.pending ?? Promise.resolve()
    const slot: Slot = previous?.netns.id === netns.id && previous.state !== 'failed' ? previous : { workload, netns, state: 'starting', pending: wait }
    const run = wait
      .catch(() => {})
      .then(async () => {
        if (slot === previous && slot.proxy !== undefined) {
          // Same pod: labels and the like change in place; a new identity or address needs a new proxy.
          if (slot.proxy.update(workload)) {
            slot.workload = workload
            return slot.proxy
          }
          await slot.proxy.close()
          delete slot.proxy
          slot.workload = workload
          slot.state = 'starting'
        } else if (previous?.proxy !== undefined) await previous.proxy.close()
        this.#slots.set(workload.uid, slot)
        this.#updateGauge()
        try {
          slot.proxy = await createWorkloadProxy({
            ...this.#options.workloadDefaults,
            workload,
            netns,
            registry: this.#options.registry,
            identities: this.#options.identities,
            policies: this.#options.policies,
            transport: this.transport,
            telemetry: this,
            logger: this.#log,
            ...(options.signal === undefined ? {} : { signal: options.signal }),
          })
          slot.state = 'ready'
          delete slot.error
          this.#log.info({ workload: `${workload.namespace}/${workload.name}`, netns: netns.path }, 'workload enrolled')
          return slot.proxy
        } catch (err) {
          slot.state = 'failed'
          slot.error = err as Error
          this.#log.error({ err, workload: `${workload.namespace}/${workload.name}` }, 'workload proxy failed to start')
          throw err
        }
      })
    slot.pending = run
    if (slot !== previous) this.#slots.set(workload.uid, slot)
    return run
  }

  removeWorkload(uid: string): Promise<boolean> {
    const slot = this.#slots.get(uid)
    if (slot === undefined) return Promise.resolve(false)
    const run = slot.pending
      .catch(() => {})
      .then(async () => {
        if (this.#slots.get(uid) !== slot) return false
        this.#slots.delete(uid)
        this.#updateGauge()
        await slot.proxy?.close()
        this.#log.info({ workload: `${slot.workload.namespace}/${slot.workload.name}` }, 'workload removed')
        return true
      })
    slot.pending = run
    return run
  }

  async replaceAll(enrollments: readonly NodeProxyEnrollment[]): Promise<void> {
    const wanted = new Set(enrollments.map((e) => e.workload.uid))
    const removals = [...this.#slots.keys()].filter((uid) => !wanted.has(uid)).map((uid) => this.removeWorkload(uid))
    const additions = enrollments.map((e) => this.addWorkload(e.workload, e.netns))
    const results = await Promise.allSettled([...removals, ...additions])
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed.length > 0) {
      const failures = failed.map((f) => (f.reason as Error).message)
      throw new AmbientError(HboneErrorCode.WorkloadsFailed, `${failed.length} of ${enrollments.length} workloads failed to start: ${failures.join('; ')}`, {
        cause: failed[0]!.reason,
        details: { failures },
      })
    }
  }

  workloads(): Workload[] {
    return [...this.#slots.values()].map((s) => s.workload)
  }

  ready(): boolean {
    return this.#notReady().length === 0
  }

  /** What keeps the node from being ready: workloads not up, components not ready. */
  #notReady(): string[] {
    const workloads = [...this.#slots.values()].filter((s) => s.state !== 'ready').map((s) => `${s.workload.namespace}/${s.workload.name} (${s.state})`)
    const components = [...this.#components.values()].flatMap((c) => {
      const why = c.notReady?.()
      return why === undefined ? [] : [`${c.name} (${why})`]
    })
    return [...workloads, ...components]
  }

  register(component: NodeProxyComponent): () => void {
    if (typeof component !== 'object' || component === null || typeof component.name !== 'string' || component.name === '') {
      throw invalidArgument('component', component, 'an object with a non-empty name')
    }
    if (this.#components.has(component.name)) throw invalidArgument('component.name', component.name, 'a name not registered yet')
    this.#components.set(component.name, component)
    return () => {
      if (this.#components.get(component.name) === component) this.#components.delete(component.name)
    }
  }

  #updateGauge(): void {
    this.metrics.setWorkloads(this.#slots.size)
  }

  configDump(): NodeProxyConfigDump {
    const identities = this.#options.identities
    const threads = this.transport.name.split('+').includes('native') ? nativeHboneThreads() : undefined
    return {
      node: this.#options.nodeName,
      workloads: [...this.#slots.values()].map((s) => ({
        uid: s.workload.uid,
        name: s.workload.name,
        namespace: s.workload.namespace,
        identity: workloadIdentity(s.workload),
        addresses: s.workload.addresses,
        netns: s.netns.path,
        state: s.state,
        ...(s.error ? { error: s.error.message } : {}),
        ...(s.proxy ? { transport: s.proxy.transport } : {}),
        connections: s.proxy?.activeConnections() ?? 0,
        hboneSessions: s.proxy?.hboneSessions() ?? { outbound: 0, inbound: 0 },
      })),
      identities: identities.ids().map((id) => {
        const svid = identities.current(id)
        return { id: id.toString(), ...(svid ? { notAfter: svid.notAfter.toISOString() } : {}) }
      }),
      policies: this.#options.policies.list().map((p) => ({ namespace: p.namespace, name: p.name, action: p.action, scope: p.scope })),
      registry: (({ workloads, services }) => ({ workloads: workloads.length, services: services.length }))(this.#options.registry.snapshot()),
      ...(threads === undefined ? {} : { hboneThreads: threads }),
      components: Object.fromEntries(
        [...this.#components.values()].map((c) => {
          const why = c.notReady?.()
          const state = c.configDump?.()
          return [c.name, { ready: why === undefined, ...(why === undefined ? {} : { notReady: why }), ...(state === undefined ? {} : { state }) }]
        }),
      ),
    }
  }

  async #serveAdmin(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]
    const send = (status: number, type: string, body: string): void => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' })
      res.end(body)
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'text/plain', 'method not allowed\n')
    // The node's configuration (workloads, netns paths, identities, policies, errors) is for the node itself, unless the operator says otherwise.
    const admin = this.#options.admin
    const trusted = (admin !== false && admin?.exposeConfigDump === true) || isLoopback(req.socket.remoteAddress)
    try {
      switch (path) {
        case '/healthz/ready': {
          const notReady = this.#notReady()
          if (notReady.length === 0) return send(200, 'text/plain', 'ready\n')
          return send(503, 'text/plain', trusted ? `not ready: ${notReady.join(', ')}\n` : 'not ready\n')
        }
        case '/metrics': {
          const exposed = await this.metrics.exposition?.()
          if (exposed === undefined) return send(501, 'text/plain', 'no Prometheus metrics: install prom-client (npm install prom-client) or give the node proxy metrics that serve them\n')
          return send(200, exposed.contentType, exposed.body)
        }
        case '/config_dump':
          if (!trusted) {
            return send(403, 'text/plain', '/config_dump is served to loopback peers only (admin.exposeConfigDump)\n')
          }
          return send(200, 'application/json', `${JSON.stringify(this.configDump(), null, 2)}\n`)
        default:
          return send(404, 'text/plain', 'not found: try /healthz/ready, /metrics or /config_dump\n')
      }
    } catch (err) {
      this.#log.error({ err, path }, 'admin request failed')
      send(500, 'text/plain', 'internal error\n')
    }
  }

  async drain(options: DrainOptions = {}): Promise<void> {
    const slots = [...this.#slots.values()]
    this.#slots.clear()
    this.#updateGauge()
    await Promise.all(slots.map((s) => s.pending.catch(() => {}).then(() => s.proxy?.drain(options))))
    await this.close()
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      const slots = [...this.#slots.values()]
      this.#slots.clear()
      await Promise.all(slots.map((s) => s.pending.catch(() => {}).then(() => s.proxy?.close())))
      const admin = this.#admin
      if (admin !== undefined) {
        admin.closeAllConnections()
        await new Promise<void>((resolve) => admin.close(() => resolve()))
      }
      this.#observer.close()
    })()
    return this.#closing
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}

/** A peer on this host's loopback (IPv4, IPv6, or IPv4 mapped into IPv6). */
function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false
  return address === '::1' || address.replace(/^::ffff:/i, '').startsWith('127.')
}

/** What counts nothing (no `prom-client`, no metrics given). */
const NO_METRICS: ProxyMetrics = Object.freeze({
  connectionOpened() {},
  connectionClosed() {},
  authorizationDenied() {},
  handshakeFailed() {},
  setWorkloads() {},
})
