import {
  AmbientError,
  CoreErrorCode,
  evaluateAuthorization,
  invalidArgument,
  PROXY_MARK,
  silentLogger,
  throwIfAborted,
  workloadIdentity,
  type AbortOptions,
  type Logger,
  type NetnsSockets,
  type PolicyStore,
  type SocketAddress,
  type Workload,
  type WorkloadRegistry,
} from '@ambientkit/core'
import type { IdentityManager } from '@ambientkit/identity'
import type { AccessLogEntry, AccessLogFormat, ProxyListener } from '../access-log'
import type { HboneWindows } from '../hbone/constants'
import { nativeHbone, nativeHboneUnavailable } from '../hbone/native'
import type { ProxyMetrics } from '../metrics'
import { observeConnections, type ConnectionObserver } from '../telemetry'
import type { HboneServerLimits, HboneTransport, TransportClient, TransportServer } from '../transport/contract'
import { createNativeTransport } from '../transport/native'
import { createNodeTransport } from '../transport/node'
import { ConnectionManager, publishHandshakeFailure, settledWithin } from './connections'
import type { WorkloadContext } from './context'
import { inboundHbone, onInboundPlaintext } from './inbound'
import { openListener, type Listener } from './listeners'
import { onOutbound } from './outbound'
import { resolvePorts, type WorkloadProxyPorts } from './ports'

/**
 * What carries HBONE tunnels when no `transport` is given: `'node'`,
 * Node's TLS and HTTP/2, or `'native'`, the addon (OpenSSL and nghttp2 on
 * its data-path threads), where a tunnel's bytes never enter JavaScript.
 */
export type HboneDataPath = 'node' | 'native'

/**
 * The data path a workload proxy uses when neither `transport` nor
 * `dataPath` is given: `'native'` when this package's addon loads, else `'node'`.
 */
export function defaultHboneDataPath(): HboneDataPath {
  return nativeHbone() === undefined ? 'node' : 'native'
}

/** The transport of a data path: `createNativeTransport()` or `createNodeTransport()`. */
export function transportFor(dataPath: HboneDataPath = defaultHboneDataPath()): HboneTransport {
  return dataPath === 'native' ? createNativeTransport() : createNodeTransport()
}

/** Options of {@link createWorkloadProxy}. */
export interface WorkloadProxyOptions extends AbortOptions {
  /** The captured workload. Its identity is `workloadIdentity(workload)`. */
  readonly workload: Workload
  /**
   * The sockets of the workload's network namespace: listeners and
   * upstream connections are made there (`@ambientkit/redirect`'s
   * `openNetns()`, or any `NetnsSockets`).
   */
  readonly netns: NetnsSockets
  /** Where outbound destinations are looked up. */
  readonly registry: WorkloadRegistry
  /**
   * Holds the workload's SVID (presented on 15008 and on outbound HBONE
   * sessions, rotated without restarting listeners) and the trust bundles
   * peers are verified with. One manager serves every workload of a node.
   */
  readonly identities: IdentityManager
  /** The authorization policies in force. Changes re-evaluate established inbound connections. */
  readonly policies: PolicyStore
  /** Outbound to a destination outside the mesh: `'passthrough'` (plain TCP, default) or `'refuse'`. */
  readonly outboundPolicy?: 'passthrough' | 'refuse'
  /** Inbound plaintext: `'permissive'` (authorize with no identity, default) or `'strict'` (deny all). */
  readonly inboundPlaintext?: 'permissive' | 'strict'
  /**
   * Connect to the app from the client's address (IP_TRANSPARENT), so the
   * app sees who called. Needs the route table the redirect package installs
   * with source preservation. Default `false`: the app sees the pod's own address.
   */
  readonly preserveSourceAddress?: boolean
  /** Listener ports. Default {@link DEFAULT_WORKLOAD_PROXY_PORTS}. */
  readonly ports?: Partial<WorkloadProxyPorts>
  /** HTTP/2 windows of HBONE sessions, both directions. Default: the HBONE defaults. */
  readonly windows?: Partial<HboneWindows>
  /** Upstream and session connect timeout, milliseconds. Default 10 000. */
  readonly connectTimeout?: number
  /**
   * What peers may hold of the inbound HBONE server (handshake timeout,
   * pending handshakes per source and in total, sessions and tunnels per
   * peer identity, the drain deadline of a session whose certificate
   * expired). Default: each limit's default (docs/security.md).
   */
  readonly limits?: HboneServerLimits
  /**
   * What carries HBONE tunnels, outbound (to other pods' 15008) and inbound
   * (this pod's 15008): any {@link HboneTransport}. A node proxy passes
   * one shared by its workloads (with the same-node fast path,
   * `createSameNodeTransport({ fallback })`). Default: the transport of `dataPath`.
   */
  readonly transport?: HboneTransport
  /**
   * The data path when no `transport` is given: `'native'` (the addon does
   * TLS, HTTP/2 and the copying; a tunnel's bytes never enter JavaScript)
   * or `'node'` (Node's `tls` and `http2`). Passthrough and plaintext
   * inbound are spliced in JavaScript either way. Default:
   * {@link defaultHboneDataPath}. Throws `ERR_AMBIENT_HBONE_NATIVE_UNAVAILABLE`
   * when `'native'` is asked for and the addon cannot be loaded.
   */
  readonly dataPath?: HboneDataPath
  /**
   * The scope its connections are published under (see
   * `observeConnections`): a node proxy passes one for all its workloads
   * and observes it. Default: the proxy observes its own connections, with
   * `metrics` and `accessLog` below.
   */
  readonly telemetry?: object
  /** With no `telemetry`: where its connections are counted. Default: none. */
  readonly metrics?: ProxyMetrics
  /** With no `telemetry`: called once per connection when it ends. Default: one `info` line on `logger`. */
  readonly accessLog?: (entry: AccessLogEntry) => void
  /** With no `telemetry` and no `accessLog`: how the default access log writes (see `AccessLogFormat`). Default `'ambientkit'`. */
  readonly accessLogFormat?: AccessLogFormat
  /** Default: silent. */
  readonly logger?: Logger
}

/** A running workload proxy. */
export interface WorkloadProxy extends AsyncDisposable {
  readonly workload: Workload
  /** The workload's SPIFFE ID. */
  readonly identity: string
  /** Where each listener is bound inside the netns. */
  readonly listeners: Readonly<Record<ProxyListener, readonly SocketAddress[]>>
  /** The name of the transport carrying its tunnels (`'native'`, `'node'`, `'same-node+native'`...). */
  readonly transport: string
  /**
   * Takes a new version of its workload, as the registry or the pod source
   * reports it. A change of labels (which select policies) or anything else
   * but the identity and addresses is applied in place, and the established
   * inbound connections are authorized again. Returns false, changing
   * nothing, when the identity or the addresses differ: those need a new
   * proxy (its certificate and listeners are theirs).
   */
  update(workload: Workload): boolean
  /** Connections being proxied now (all listeners). */
  activeConnections(): number
  /** HBONE sessions held now: pooled outbound ones and inbound ones from peers. */
  hboneSessions(): { outbound: number; inbound: number }
  /**
   * Stops accepting (and sends GOAWAY on inbound sessions), lets those
   * sessions and the connections finish until `deadline` (milliseconds,
   * default 5000), then closes what remains. Resolves when everything is
   * closed; an aborted `signal` ends the wait early (the rest is closed,
   * and it rejects).
   */
  drain(options?: DrainOptions): Promise<void>
  /** Closes listeners and every connection at once. Idempotent. */
  close(): Promise<void>
}

/** Options of a drain. */
export interface DrainOptions extends AbortOptions {
  /** Milliseconds connections may take to finish before they are closed. Default 5000. */
  readonly deadline?: number
}

/**
 * Starts the proxy of one captured workload: opens, inside the pod's
 * network namespace, the outbound (15001), inbound plaintext (15006) and
 * inbound HBONE (15008) listeners. Every socket it creates there carries
 * mark 0x539, so the pod's capture rules let the proxy's own traffic pass.
 *
 * @example
 * ```ts
 * import { createPolicyStore, createWorkloadRegistry, type Workload } from '@ambientkit/core'
 * import type { IdentityManager } from '@ambientkit/identity'
 * import { createWorkloadProxy } from '@ambientkit/proxy'
 * import { openNetns } from '@ambientkit/redirect'
 *
 * declare const workload: Workload // the captured pod, as the registry knows it
 * declare const identities: IdentityManager // holds the pod's SVID
 * const proxy = await createWorkloadProxy({
 *   workload, netns: openNetns('/run/netns/pod-a'), registry: createWorkloadRegistry(), identities, policies: createPolicyStore(),
 * })
 * console.log(proxy.listeners.outbound, proxy.transport)
 * await proxy.drain({ deadline: 5000 })
 * ```
 */
export async function createWorkloadProxy(options: WorkloadProxyOptions): Promise<WorkloadProxy> {
  if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
  throwIfAborted(options.signal, 'createWorkloadProxy')
  const proxy = new WorkloadProxyImpl(options)
  try {
    await proxy.start(options.signal)
  } catch (err) {
    await proxy.close()
    throw err
  }
  return proxy
}

class WorkloadProxyImpl implements WorkloadProxy {
  readonly identity: string
  readonly listeners: Record<ProxyListener, SocketAddress[]> = { outbound: [], 'inbound-hbone': [], 'inbound-plaintext': [] }
  readonly transport: string
  readonly #options: WorkloadProxyOptions
  readonly #transport: HboneTransport
  readonly #context: WorkloadContext
  readonly #connections: ConnectionManager
  readonly #client: TransportClient
  readonly #observer: ConnectionObserver | undefined
  readonly #open: Listener[] = []
  readonly #unsubscribe: () => void
  #server: TransportServer | undefined
  #stopping = false
  #closing: Promise<void> | undefined

  constructor(options: WorkloadProxyOptions) {
    this.#options = options
    this.identity = workloadIdentity(options.workload)
    const ports = resolvePorts(options.ports)
    if (options.dataPath !== undefined && options.dataPath !== 'node' && options.dataPath !== 'native') {
      throw invalidArgument('dataPath', options.dataPath, "'node' or 'native'")
    }
    if (options.dataPath === 'native' && options.transport === undefined) {
      const unavailable = nativeHboneUnavailable()
      if (unavailable !== undefined) throw unavailable
    }
    this.#transport = options.transport ?? transportFor(options.dataPath)
    this.transport = this.#transport.name
    const logger = (options.logger ?? silentLogger).child({ workload: `${options.workload.namespace}/${options.workload.name}` })
    const telemetry = options.telemetry ?? this
    if (options.telemetry === undefined) {
      this.#observer = observeConnections({ telemetry, ...(options.metrics ? { metrics: options.metrics } : {}), ...(options.accessLog ? { accessLog: options.accessLog } : {}), ...(options.accessLogFormat ? { accessLogFormat: options.accessLogFormat } : {}), logger })
    }
    this.#connections = new ConnectionManager(options.workload, this.identity, telemetry, logger)
    const netns = options.netns
    this.#client = this.#transport.createClient({
      identities: options.identities,
      // The session's own TCP connection, from inside the pod and marked so capture lets it pass.
      connectSession: (address, { signal }) => netns.connectFd({ host: address.address, port: address.port, mark: PROXY_MARK, signal }),
      ...(options.windows ? { windows: options.windows } : {}),
      ...(options.connectTimeout === undefined ? {} : { sessionTimeout: options.connectTimeout }),
      logger,
    })
    this.#context = {
      workload: options.workload,
      identity: this.identity,
      netns,
      registry: options.registry,
      policies: options.policies,
      ports,
      outboundPolicy: options.outboundPolicy ?? 'passthrough',
      inboundPlaintext: options.inboundPlaintext ?? 'permissive',
      preserveSourceAddress: options.preserveSourceAddress === true,
      connections: this.#connections,
      client: this.#client,
      logger,
      stopping: () => this.#stopping,
    }
    this.#unsubscribe = options.policies.subscribe(() => this.#reauthorize())
  }

  get workload(): Workload {
    return this.#context.workload
  }

  update(workload: Workload): boolean {
    const current = this.#context.workload
    const sameAddresses = workload.addresses.length === current.addresses.length && workload.addresses.every((a, i) => a === current.addresses[i])
    if (workload.uid !== current.uid || workloadIdentity(workload) !== this.identity || !sameAddresses) return false
    this.#context.workload = workload
    this.#connections.workload = workload
    // Its labels select policies: what is established is decided again.
    this.#reauthorize()
    return true
  }

  #reauthorize(): void {
    const policies = this.#options.policies
    this.#connections.reauthorize((connection) => evaluateAuthorization(policies.list(), connection))
  }

  async start(signal: AbortSignal | undefined): Promise<void> {
    const options = this.#options
    const context = this.#context
    const telemetry = this.#connections.telemetry
    const server = await this.#transport.createServer({
      ...inboundHbone(context),
      identities: options.identities,
      identity: this.identity,
      addresses: this.workload.addresses,
      ...(options.connectTimeout === undefined ? {} : { connectTimeout: options.connectTimeout }),
      ...(options.windows ? { windows: options.windows } : {}),
      ...options.limits,
      logger: context.logger,
      onHandshakeFailure: (failure) => {
        publishHandshakeFailure({ telemetry, workload: this.workload, failure })
      },
    })
    this.#server = server
    throwIfAborted(signal, 'createWorkloadProxy')
    if (this.#closing !== undefined) throw new AmbientError(CoreErrorCode.Closed, 'workload proxy is closed')
    const { ports, netns, logger } = context
    const paused = (listener: ProxyListener) => (errno: string) => logger.warn({ listener, errno }, 'accepting paused for 100 ms: out of descriptors or memory')
    this.#listen('outbound', openListener(netns, ports.outbound, logger, (socket) => onOutbound(context, socket), paused('outbound')))
    this.#listen('inbound-plaintext', openListener(netns, ports.inboundPlaintext, logger, (socket) => onInboundPlaintext(context, socket), paused('inbound-plaintext')))
    this.#listen('inbound-hbone', openListener(netns, ports.inbound, logger, ({ fd, remote }) => server.handle(fd, remote), paused('inbound-hbone')))
  }

  #listen(name: ProxyListener, listener: Listener): void {
    this.#open.push(listener)
    this.listeners[name].push(listener.address)
  }

  activeConnections(): number {
    return this.#connections.size
  }

  hboneSessions(): { outbound: number; inbound: number } {
    return { outbound: this.#client.stats().length, inbound: this.#server?.stats().sessions ?? 0 }
  }

  async drain(options: DrainOptions = {}): Promise<void> {
    this.#stopAccepting()
    const end = performance.now() + (options.deadline ?? 5000)
    const signal = options.signal ? { signal: options.signal } : {}
    // GOAWAY on inbound sessions: peers open new tunnels elsewhere, open ones
    // finish. A CONNECT that a session received before its GOAWAY is still
    // this server's to serve (RFC 9113 §6.8) even while its request has not
    // reached this thread, so has no connection record yet (the native data
    // path queues it): the drain waits for the sessions to close, then for
    // the connections.
    const sessions = this.#server?.drain()
    try {
      if (sessions !== undefined) await settledWithin(sessions, { deadline: Math.max(0, end - performance.now()), ...signal })
      await this.#connections.idle({ deadline: Math.max(0, end - performance.now()), ...signal })
    } finally {
      this.#connections.terminateAll('the drain deadline passed')
      await this.close()
    }
  }

  #stopAccepting(): void {
    this.#stopping = true
    for (const listener of this.#open.splice(0)) listener.acceptor.close()
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#unsubscribe()
      this.#stopAccepting()
      this.#connections.terminateAll('workload proxy closed')
      await Promise.all([this.#server?.close(), this.#client.close()])
      // Terminated connections report their end as their sockets close: observed before observing stops.
      await this.#connections.idle({ deadline: 1000 })
      this.#observer?.close()
    })()
    return this.#closing
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}
