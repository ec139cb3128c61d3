import { closeSync } from 'node:fs'
import { Socket, type Server, type SocketConstructorOpts } from 'node:net'
import type { Duplex } from 'node:stream'
import {
  evaluateAuthorization,
  formatSocketAddress,
  HBONE_PORT,
  INBOUND_PORT,
  invalidArgument,
  isAmbientError,
  OUTBOUND_PORT,
  PROXY_MARK,
  silentLogger,
  tryCanonicalIp,
  workloadIdentity,
  type AuthorizationConnection,
  type AuthorizationDecision,
  type Closable,
  type Logger,
  type PolicyStore,
  type SocketAddress,
  type Workload,
  type WorkloadRegistry,
} from '@ambientkit/core'
import { tlsClientOptions, tlsServerOptions, type IdentityManager } from '@ambientkit/identity'
import { originalDestination, type Netns, type NetnsConnectFdOptions, type NetnsConnectOptions } from '@ambientkit/redirect'
import type { AccessLogEntry, AccessLogPeer, ConnectionOutcome, ProxyListener } from './access-log'
import { createHboneClient, type HboneClient } from './hbone/client'
import type { HboneWindows } from './hbone/constants'
import { nativeHbone, nativeHboneUnavailable, type NativeAcceptor, type NativeAddon } from './hbone/native'
import { createNativeHboneClient, type NativeHboneClient } from './hbone/native-client'
import { createNativeHboneServer, type NativeUpstreamConnectOptions } from './hbone/native-server'
import type { NativeTunnel } from './hbone/native-tunnel'
import { createHboneServer, type HboneDecision, type HboneRequest, type HboneServer, type HboneTunnelRecord } from './hbone/server'
import { startTunnelSplice, type SpliceResult } from './hbone/splice'
import type { ConnectionLabels, ProxyMetrics } from './metrics'
import { startSocketSplice, type SocketSpliceResult } from './splice-sockets'

/** Ports of a workload proxy's listeners inside the pod's network namespace. */
export interface WorkloadProxyPorts {
  /** Outbound capture (the REDIRECT target of the pod's nat OUTPUT rules). Default 15001. */
  readonly outbound: number
  /** Inbound plaintext (the REDIRECT target of nat PREROUTING). Default 15006. */
  readonly inboundPlaintext: number
  /** Inbound HBONE (mTLS, HTTP/2 CONNECT). Default 15008. */
  readonly inbound: number
}

/**
 * What carries the bytes of HBONE tunnels: `'node'`, Node's TLS and
 * HTTP/2, or `'native'`, the addon (OpenSSL and nghttp2 on its data-path
 * threads), where a tunnel's bytes never enter JavaScript.
 */
export type HboneDataPath = 'node' | 'native'

/**
 * The data path a workload proxy uses when `dataPath` is not given:
 * `'native'` when this package's addon is built and loads, else `'node'`.
 */
export function defaultHboneDataPath(): HboneDataPath {
  return nativeHbone() === undefined ? 'node' : 'native'
}

/** Istio's ports, which our capture rules redirect to. */
export const DEFAULT_WORKLOAD_PROXY_PORTS: WorkloadProxyPorts = Object.freeze({ outbound: OUTBOUND_PORT, inboundPlaintext: INBOUND_PORT, inbound: HBONE_PORT })

/** Options of {@link createWorkloadProxy}. */
export interface WorkloadProxyOptions {
  /** The captured workload. Its identity is `workloadIdentity(workload)`. */
  readonly workload: Workload
  /** The workload's network namespace: listeners and upstream sockets are created there. */
  readonly netns: Netns
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
  /** Upstream connect timeout, milliseconds. Default 10 000. */
  readonly connectTimeout?: number
  /**
   * What carries HBONE tunnels, outbound (to other pods' 15008) and inbound
   * (this pod's 15008). `'native'`: the native addon of this package
   * does TLS, HTTP/2 and the copying; a tunnel's bytes never enter
   * JavaScript, which still verifies identities, authorizes each `CONNECT`,
   * chooses upstreams and writes the same access log and metrics.
   * `'node'`: Node's `tls` and `http2`, every byte through JavaScript.
   * Passthrough, plaintext inbound and the same-node fast path are the same
   * either way. Default: {@link defaultHboneDataPath} (native when the addon
   * is built). `createWorkloadProxy` throws `ERR_AMBIENT_HBONE_NATIVE_UNAVAILABLE`
   * when `'native'` is asked for and the addon is not built.
   */
  readonly dataPath?: HboneDataPath
  /**
   * The workload proxy of this process serving a workload, if any: an
   * outbound connection to a workload served here skips HBONE (the same-node fast path, as in
   * ztunnel). The destination's proxy authorizes it with this workload's
   * identity, exactly as if it had arrived on 15008, connects to its app,
   * and the two sockets are spliced in-process: nothing crosses the wire
   * between the pods, so there is nothing to encrypt. The node proxy passes
   * its own workloads here when `sameNodeFastPath` is on. Default: none.
   */
  readonly localWorkloads?: (workload: Workload) => WorkloadProxy | undefined
  readonly metrics?: ProxyMetrics
  /** Called once per connection when it ends. Default: one `info` line on `logger`. */
  readonly accessLog?: (entry: AccessLogEntry) => void
  /** Default: silent. */
  readonly logger?: Logger
}

/** A running workload proxy. */
export interface WorkloadProxy extends Closable {
  readonly workload: Workload
  /** The workload's SPIFFE ID. */
  readonly identity: string
  /** Where each listener is bound inside the netns. */
  readonly listeners: Readonly<Record<ProxyListener, readonly SocketAddress[]>>
  /** What carries its HBONE tunnels: the `dataPath` asked for, or the default ({@link defaultHboneDataPath}) it resolved to. */
  readonly dataPath: HboneDataPath
  /** Connections being proxied now (all listeners). */
  activeConnections(): number
  /** HBONE sessions held now: pooled outbound ones and inbound ones from peers. */
  hboneSessions(): { outbound: number; inbound: number }
  /**
   * Stops accepting, lets connections finish until `deadline` (milliseconds,
   * default 5000), then closes what remains. Resolves when everything is closed.
   */
  drain(options?: { deadline?: number }): Promise<void>
  /** Closes listeners and every connection at once. Idempotent. */
  close(): Promise<void>
}

/** What ends an established connection: a socket whose splice resets the other side, or a native tunnel. */
interface Resettable {
  resetAndDestroy(): unknown
}

/**
 * A proxied connection, from accept until its access-log line. A class
 * rather than closures, so that an idle connection holds only these fields.
 */
class TrackedConnection {
  /** Set when a policy change closed the connection: its log entry says `terminated`. */
  terminatedBy: string | undefined
  /** While the upstream is being connected: aborting it ends the connection. Dropped, with its signal, once connected. */
  #connecting: AbortController | undefined
  /** Once connected: resetting it ends the connection, as the splice resets the other side. */
  #socket: Resettable | undefined
  #log: Logger | undefined

  constructor(
    readonly listener: ProxyListener,
    /** Inbound connections are re-authorized when policies change. */
    readonly authorization?: AuthorizationConnection,
  ) {}

  /** The signal of the upstream connect, aborted by {@link terminate} until {@link established}. */
  connecting(): AbortSignal {
    this.#connecting ??= new AbortController()
    return this.#connecting.signal
  }

  /** Connected: terminating now resets `socket`, with an `info` line on `log` when given. */
  established(socket: Resettable, log?: Logger): void {
    this.#connecting = undefined
    this.#socket = socket
    this.#log = log
  }

  terminate(reason: string): void {
    if (this.#socket === undefined) {
      this.#connecting?.abort(new Error(reason))
      return
    }
    this.#log?.info({ reason }, 'terminating outbound tunnel')
    this.#socket.resetAndDestroy()
  }
}

type OutboundEntry = Omit<AccessLogEntry, 'listener' | 'durationMs' | 'source'>

/** An outbound connection to a mesh workload, as `#routeOutbound` resolved it, handed to the path that carries it. */
interface MeshRoute {
  readonly target: Workload
  readonly address: string
  readonly port: number
  readonly service: string | undefined
  readonly start: OutboundStart
  /** Listens for the app closing before its upstream is ready; removed once the connection is carried. */
  readonly earlyClose: () => void
  /** Refuses the connection with its log line; `reset: false` when it is no longer ours to reset. */
  readonly refuse: (reason: string, outcome: ConnectionOutcome, extra: Partial<AccessLogEntry>, reset?: boolean) => void
}

/** What an outbound connection's log line needs from its accept. */
interface OutboundStart {
  readonly tracked: TrackedConnection
  readonly started: number
  readonly source: AccessLogPeer
}

const DUAL_STACK = '::'

/**
 * Whether a failed dual-stack listen means the kernel has no IPv6 at all
 * (booted with `ipv6.disable=1`: no AF_INET6 sockets), the one case for an
 * IPv4-only listener. A pod whose IPv6 is only disabled by sysctl still
 * binds `::` and takes IPv4 through it; any other failure, such as another
 * program holding the port, is an error: an IPv4-only proxy would leave the
 * pod's captured IPv6 traffic to whoever holds `[::]:port`.
 */
function kernelWithoutIpv6(err: unknown): boolean {
  const { code, details } = err as { code?: unknown; details?: { errnoName?: unknown } }
  return code === 'EAFNOSUPPORT' || details?.errnoName === 'EAFNOSUPPORT'
}

/**
 * Starts the proxy of one captured workload: opens, inside the pod's
 * network namespace, the outbound (15001), inbound plaintext (15006) and
 * inbound HBONE (15008) listeners. Every socket it creates there carries
 * mark 0x539, so the pod's capture rules let the proxy's own traffic pass.
 */
export async function createWorkloadProxy(options: WorkloadProxyOptions): Promise<WorkloadProxy> {
  const proxy = new WorkloadProxyImpl(options)
  try {
    await proxy.start()
  } catch (err) {
    await proxy.close()
    throw err
  }
  return proxy
}

class WorkloadProxyImpl implements WorkloadProxy {
  readonly workload: Workload
  readonly identity: string
  readonly listeners: Record<ProxyListener, SocketAddress[]> = { outbound: [], 'inbound-hbone': [], 'inbound-plaintext': [] }
  readonly #options: WorkloadProxyOptions
  readonly #ports: WorkloadProxyPorts
  readonly #log: Logger
  readonly #servers: Server[] = []
  /** Listeners the addon accepts on (the native data path's outbound one). */
  readonly #acceptors: NativeAcceptor[] = []
  /** Every socket the listeners accepted and that is still open. */
  readonly #accepted = new Set<Socket>()
  /** `close` listener of every accepted socket (the socket is `this`): one function per proxy rather than a closure per connection. */
  readonly #forgetAccepted: (this: Socket) => void
  readonly #connections = new Set<TrackedConnection>()
  /** The 15008 side: Node's HBONE server or the native one. */
  #hboneServer: Pick<HboneServer, 'handle' | 'stats' | 'drain' | 'close'> | undefined
  /** The outbound HBONE client of the data path in use. */
  readonly #outbound: { readonly path: 'node'; readonly client: HboneClient } | { readonly path: 'native'; readonly client: NativeHboneClient; readonly addon: NativeAddon }
  readonly #unsubscribe: () => void
  readonly #idleWaiters: Array<() => void> = []
  #closing: Promise<void> | undefined
  /** Set by drain(): no new connections, also none handed over in-process. */
  #draining = false

  constructor(options: WorkloadProxyOptions) {
    const accepted = this.#accepted
    this.#forgetAccepted = function () {
      accepted.delete(this)
    }
    this.#options = options
    this.workload = options.workload
    this.identity = workloadIdentity(options.workload)
    this.#ports = { ...DEFAULT_WORKLOAD_PROXY_PORTS, ...options.ports }
    for (const [name, port] of Object.entries(this.#ports)) {
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArgument(`ports.${name}`, port, 'a port 1-65535')
    }
    if (new Set(Object.values(this.#ports)).size !== 3) throw invalidArgument('ports', this.#ports, 'three different ports')
    if (options.dataPath !== undefined && options.dataPath !== 'node' && options.dataPath !== 'native') {
      throw invalidArgument('dataPath', options.dataPath, "'node' or 'native'")
    }
    if (options.dataPath === 'native') {
      const unavailable = nativeHboneUnavailable()
      if (unavailable !== undefined) throw unavailable
    }
    this.#log = (options.logger ?? silentLogger).child({ workload: `${options.workload.namespace}/${options.workload.name}` })
    const netns = options.netns
    const connectTimeout = options.connectTimeout ?? 10_000
    const addon = (options.dataPath ?? defaultHboneDataPath()) === 'native' ? nativeHbone() : undefined
    if (addon !== undefined) {
      const client = createNativeHboneClient({
        addon,
        identities: options.identities,
        // The session's own TCP connection, as for the Node client; only the addon reads it.
        socketFactory: (address, { signal }) => netns.connectFd({ host: address.address, port: address.port, mark: PROXY_MARK, signal }),
        ...(options.windows ? { windows: options.windows } : {}),
        sessionTimeout: connectTimeout,
        logger: this.#log,
      })
      this.#outbound = { path: 'native', client, addon }
    } else {
      const client = createHboneClient({
        // A session is keyed by its expected identities, so the handshake itself
        // can refuse any other server.
        tls: (identity, { signal, expectedIdentities }) =>
          tlsClientOptions({ manager: options.identities, id: identity ?? this.identity, expectedPeers: expectedIdentities, alpnProtocols: ['h2'], signal }),
        // The session's own TCP connection: a FIN from the server ends it (no half-open).
        socketFactory: (address, { signal }) => dial(netns, { host: address.address, port: address.port, signal }, false),
        ...(options.windows ? { windows: options.windows } : {}),
        sessionTimeout: connectTimeout,
        logger: this.#log,
      })
      this.#outbound = { path: 'node', client }
    }
    this.#unsubscribe = options.policies.subscribe(() => this.#reauthorize())
  }

  async start(): Promise<void> {
    const common = {
      decide: (request: HboneRequest) => this.#decideInbound(request),
      connectTimeout: this.#options.connectTimeout ?? 10_000,
      ...(this.#options.windows ? { windows: this.#options.windows } : {}),
      logger: this.#log,
      onTunnel: (record: HboneTunnelRecord) => this.#onTunnelEnd(record),
      onHandshakeFailure: (failure: { error: Error; reason: string }) => {
        this.#log.warn({ err: failure.error, reason: failure.reason }, 'inbound HBONE handshake failed')
        this.#options.metrics?.handshakeFailed({ destination_workload: this.workload.name, reason: failure.reason })
      },
    }
    const outbound = this.#outbound
    const hboneServer = outbound.path === 'native'
      ? createNativeHboneServer({
        ...common,
        addon: outbound.addon,
        identities: this.#options.identities,
        identity: this.identity,
        connect: (destination, options) => this.#connectNativeUpstream(destination, options),
      })
      : createHboneServer({
        ...common,
        tls: await tlsServerOptions({ manager: this.#options.identities, id: this.identity, alpnProtocols: ['h2'] }),
        connect: (destination, { signal, request, context }) => this.#connectTunnelUpstream(destination, signal, request, context as AuthorizationConnection),
      })
    this.#hboneServer = hboneServer
    // Listeners up means the SVID is at hand (the Node server's TLS options fetched it above).
    if (outbound.path === 'native') await this.#options.identities.get(this.identity)
    // Spliced sockets keep half-close and wait, paused, for their upstream. On the native
    // path, captured connections are accepted by the addon: most go to it as they are.
    if (outbound.path === 'native') this.#listenNative('outbound', this.#ports.outbound, outbound.addon, (fd, address, port, family) => this.#onOutboundFd(fd, address, port, family))
    else await this.#listen('outbound', this.#ports.outbound, (socket) => this.#onOutbound(socket), { allowHalfOpen: true, pauseOnConnect: true })
    await this.#listen('inbound-plaintext', this.#ports.inboundPlaintext, (socket) => this.#onInboundPlaintext(socket), { allowHalfOpen: true, pauseOnConnect: true })
    // HBONE carries half-close inside the tunnel; its own TCP connection ends on FIN. The native
    // server takes the connection from Node before the TLS handshake: Node must not read it.
    await this.#listen('inbound-hbone', this.#ports.inbound, (socket) => hboneServer.handle(socket), { allowHalfOpen: false, pauseOnConnect: outbound.path === 'native' })
  }

  async #listen(listener: ProxyListener, port: number, onConnection: (socket: Socket) => void, accept: { allowHalfOpen: boolean; pauseOnConnect: boolean }): Promise<void> {
    const serverOptions = { ...accept, noDelay: true }
    let server: Server
    try {
      server = await this.#options.netns.listen({ host: DUAL_STACK, port, mark: PROXY_MARK, ipv6Only: false, server: serverOptions })
    } catch (err) {
      if (!kernelWithoutIpv6(err)) throw err
      this.#log.info({ port }, 'no IPv6 in this kernel: listening on IPv4 only')
      server = await this.#options.netns.listen({ host: '0.0.0.0', port, mark: PROXY_MARK, server: serverOptions })
    }
    this.#servers.push(server)
    const address = server.address()
    if (address !== null && typeof address === 'object') this.listeners[listener].push({ address: address.address, port: address.port, family: address.family === 'IPv6' ? 6 : 4 })
    server.on('connection', (socket: Socket) => {
      this.#accepted.add(socket)
      socket.on('close', this.#forgetAccepted)
      onConnection(socket)
    })
    server.on('error', (err) => this.#log.error({ err, listener }, 'listener failed'))
  }

  /** A listener whose connections the addon accepts and hands over as descriptors: no `net.Socket` for those that never need one. */
  #listenNative(listener: ProxyListener, port: number, addon: NativeAddon, onConnection: (fd: number, address: string, port: number, family: 4 | 6) => void): void {
    let fd: number
    let bound: SocketAddress = { address: DUAL_STACK, port, family: 6 }
    try {
      fd = this.#options.netns.listenFd({ host: DUAL_STACK, port, mark: PROXY_MARK, ipv6Only: false })
    } catch (err) {
      if (!kernelWithoutIpv6(err)) throw err
      this.#log.info({ port }, 'no IPv6 in this kernel: listening on IPv4 only')
      fd = this.#options.netns.listenFd({ host: '0.0.0.0', port, mark: PROXY_MARK })
      bound = { address: '0.0.0.0', port, family: 4 }
    }
    try {
      this.#acceptors.push(addon.accept(fd, onConnection))
    } catch (err) {
      closeSync(fd) // not the addon's yet
      throw err
    }
    this.listeners[listener].push(bound)
  }

  #track(connection: TrackedConnection): void {
    this.#connections.add(connection)
  }

  #untrack(connection: TrackedConnection): void {
    if (this.#connections.delete(connection) && this.#connections.size === 0) {
      for (const resolve of this.#idleWaiters.splice(0)) resolve()
    }
  }

  get dataPath(): HboneDataPath {
    return this.#outbound.path
  }

  activeConnections(): number {
    return this.#connections.size
  }

  hboneSessions(): { outbound: number; inbound: number } {
    return { outbound: this.#outbound.client.stats().length, inbound: this.#hboneServer?.stats().sessions ?? 0 }
  }

  // ---- outbound -----------------------------------------------------------

  /** Where a captured connection was going (SO_ORIGINAL_DST); without it the connection is reset and logged. */
  #originalDestinationOrReset(socket: Socket | number, direction: 'outbound' | 'inbound', family?: 4 | 6): SocketAddress | undefined {
    try {
      return originalDestination(socket, family)
    } catch (err) {
      this.#log.warn({ err }, `${direction} connection without an original destination`)
      this.#resetApp(socket)
      return undefined
    }
  }

  #onOutbound(app: Socket): void {
    const started = Date.now()
    const source = this.#peer(app.remoteAddress, app.remotePort)
    const destination = this.#originalDestinationOrReset(app, 'outbound')
    if (destination === undefined) return
    const tracked = new TrackedConnection('outbound')
    this.#track(tracked)
    app.on('error', ignore)
    void this.#routeOutbound(app, destination, { tracked, started, source })
  }

  /** An outbound connection the addon accepted: routed like {@link #onOutbound}'s, as a descriptor for as long as it can stay one. */
  #onOutboundFd(fd: number, address: string, port: number, family: 4 | 6): void {
    const started = Date.now()
    const source = this.#peer(address, port)
    const destination = this.#originalDestinationOrReset(fd, 'outbound', family)
    if (destination === undefined) return
    const tracked = new TrackedConnection('outbound')
    this.#track(tracked)
    void this.#routeOutbound(fd, destination, { tracked, started, source })
  }

  /** Resets an accepted connection that is refused: a socket, or a descriptor from the addon's accept (only on the native path). */
  #resetApp(app: Socket | number): void {
    if (typeof app !== 'number') app.resetAndDestroy()
    else if (this.#outbound.path === 'native') this.#outbound.addon.resetFd(app)
  }

  /** A descriptor from the addon's accept as the socket a splice or refusal needs, tracked like an accepted socket. */
  #adopt(fd: number): Socket {
    const socket = new Socket({ fd, allowHalfOpen: true, readable: true, writable: true, pauseOnCreate: true } as SocketConstructorOpts)
    this.#accepted.add(socket)
    socket.on('close', this.#forgetAccepted)
    socket.on('error', ignore)
    return socket
  }

  #finishOutbound({ tracked, started, source }: OutboundStart, entry: OutboundEntry): void {
    this.#untrack(tracked)
    this.#record({ listener: 'outbound', source, durationMs: Date.now() - started, ...entry })
  }

  /**
   * Routes a captured connection: `accepted` is a socket (Node's listener)
   * or a descriptor (the addon's), which becomes a socket only on the paths
   * that splice it in JavaScript.
   */
  async #routeOutbound(accepted: Socket | number, destination: SocketAddress, start: OutboundStart): Promise<void> {
    const { tracked } = start
    const finish = (entry: OutboundEntry): void => this.#finishOutbound(start, entry)
    const signal = tracked.connecting()
    const earlyClose = (): void => tracked.terminate('application closed before the upstream was ready')
    let app = accepted
    const asSocket = (): Socket => {
      if (typeof app === 'number') {
        app = this.#adopt(app)
        app.once('close', earlyClose)
      }
      return app
    }
    if (typeof app !== 'number') app.once('close', earlyClose)
    // `reset: false` when the connection is no longer ours to reset (the native client took it).
    const refuse = (reason: string, outcome: ConnectionOutcome = 'refused', extra: Partial<AccessLogEntry> = {}, reset = true): void => {
      if (typeof app !== 'number') app.off('close', earlyClose)
      if (reset) this.#resetApp(app)
      finish({ protocol: 'TCP', destination: { address: destination.address, port: destination.port }, bytesSent: 0, bytesReceived: 0, outcome, reason, ...extra })
    }
    if (this.#isOwnListener(destination)) return refuse(`destination ${formatSocketAddress(destination)} is the proxy itself (loop)`)
    const resolved = this.#options.registry.resolve(destination.address, destination.port)
    const target = resolved?.workload
    const service = resolved?.kind === 'service' ? resolved.service.hostname : undefined
    const peer = {
      address: resolved?.address ?? destination.address,
      port: resolved?.port ?? destination.port,
      ...(target ? { workload: target.name, namespace: target.namespace } : {}),
    }
    if (target?.protocol === 'HBONE') {
      const local = this.#options.localWorkloads?.(target)
      const route: MeshRoute = { target, address: peer.address, port: peer.port, service, start, earlyClose, refuse }
      if (local instanceof WorkloadProxyImpl) return this.#routeLocal(asSocket(), local, route)
      const outbound = this.#outbound
      if (outbound.path === 'native') return this.#routeNativeTunnel(app, outbound.client, route)
      const socket = asSocket()
      const expected = workloadIdentity(target)
      let tunnel
      try {
        tunnel = await outbound.client.connect(
          { address: peer.address, port: peer.port, family: peer.address.includes(':') ? 6 : 4 },
          { expectedIdentities: [expected], identity: this.identity, ...this.#sourceAddressFor(peer.address), signal },
        )
      } catch (err) {
        const status = isAmbientError(err) ? (err.details.status as number | undefined) : undefined
        return refuse(`HBONE connect failed: ${(err as Error).message}`, status === 401 ? 'denied' : 'failed', {
          protocol: 'HBONE',
          destination: { ...peer, identity: expected },
          ...(service ? { service } : {}),
        })
      }
      socket.off('close', earlyClose)
      tracked.established(socket, this.#log)
      return this.#spliceOutboundTunnel(socket, tunnel, start, target, peer.address, peer.port, service)
    }
    if (this.#options.outboundPolicy === 'refuse') return refuse('destination is not in the mesh and passthrough is off')
    const socket = asSocket()
    const labels = this.#labels('source', { identity: this.identity, workload: this.workload }, { workload: target }, 'none')
    let upstream: Socket
    try {
      upstream = await dial(this.#options.netns, { host: peer.address, port: peer.port, signal })
    } catch (err) {
      return refuse(`passthrough connect failed: ${(err as Error).message}`, 'failed', { destination: peer })
    }
    socket.off('close', earlyClose)
    tracked.established(socket)
    this.#spliceOutboundSockets(socket, upstream, start, labels, { protocol: 'TCP', destination: peer, ...(service ? { service } : {}) })
  }

  // The two splices below are methods of their own, not the tail of #routeOutbound: what an idle
  // connection keeps is then only their arguments, not the setup's async frame and closures.

  /** Labels and logged destination are derived from `target` again at the end rather than kept meanwhile. */
  #spliceOutboundTunnel(app: Socket, tunnel: Duplex, start: OutboundStart, target: Workload, address: string, port: number, service: string | undefined): void {
    this.#options.metrics?.connectionOpened(this.#outboundTunnelLabels(target))
    startTunnelSplice(app, tunnel, (result) => this.#outboundTunnelEnded(result, start, target, address, port, service))
    dropIgnore(app)
  }

  /** An outbound tunnel ended, on either data path: metrics and the access-log line. */
  #outboundTunnelEnded(result: SpliceResult, start: OutboundStart, target: Workload, address: string, port: number, service: string | undefined): void {
    const bytes = { sent: result.socketBytesRead, received: result.socketBytesWritten }
    this.#options.metrics?.connectionClosed(this.#outboundTunnelLabels(target), bytes)
    this.#finishOutbound(start, {
      protocol: 'HBONE',
      destination: { address, port, workload: target.name, namespace: target.namespace, identity: workloadIdentity(target) },
      ...(service ? { service } : {}),
      bytesSent: bytes.sent,
      bytesReceived: bytes.received,
      outcome: result.outcome === 'closed' ? 'closed' : 'reset',
      ...(result.error ? { reason: result.error.message } : {}),
    })
  }

  /**
   * An outbound HBONE connection on the native data path: the app's socket
   * goes to the addon once a session is ready, and the tunnel reports its
   * end as the Node path's splice does.
   */
  async #routeNativeTunnel(app: Socket | number, client: NativeHboneClient, route: MeshRoute): Promise<void> {
    const { target, address, port, service, start, earlyClose, refuse } = route
    const expected = workloadIdentity(target)
    // The socket's 'close' will be its handover to the addon, not the app going away. Until
    // then nothing else closes it but close(), which ends the connect through the signal.
    if (typeof app !== 'number') app.off('close', earlyClose)
    let tunnel: NativeTunnel
    try {
      tunnel = await client.open(app, { address, port, family: address.includes(':') ? 6 : 4 }, {
        expectedIdentities: [expected],
        identity: this.identity,
        ...this.#sourceAddressFor(address),
        signal: start.tracked.connecting(),
      })
    } catch (err) {
      // The client has reset a descriptor already; a socket it did not take is reset here
      // (one it took was closed by the addon, and resetting it again does nothing).
      const status = isAmbientError(err) ? (err.details.status as number | undefined) : undefined
      return refuse(
        `HBONE connect failed: ${(err as Error).message}`,
        status === 401 ? 'denied' : 'failed',
        {
          protocol: 'HBONE',
          destination: { address, port, workload: target.name, namespace: target.namespace, identity: expected },
          ...(service ? { service } : {}),
        },
        typeof app !== 'number',
      )
    }
    start.tracked.established(tunnel, this.#log)
    this.#options.metrics?.connectionOpened(this.#outboundTunnelLabels(target))
    tunnel.onClose((result) => this.#outboundTunnelEnded(result, start, target, address, port, service))
  }

  /**
   * Splices the app's socket with a plain upstream socket: passthrough
   * (`TCP`) or a same-node handover (`local`, whose destination side hears
   * of the end through `ended`).
   */
  #spliceOutboundSockets(
    app: Socket,
    upstream: Socket,
    start: OutboundStart,
    labels: ConnectionLabels,
    logged: Pick<AccessLogEntry, 'protocol' | 'destination' | 'service'>,
    ended?: (result: SocketSpliceResult) => void,
  ): void {
    this.#options.metrics?.connectionOpened(labels)
    startSocketSplice(app, upstream, (result) => {
      this.#options.metrics?.connectionClosed(labels, { sent: result.aToB, received: result.bToA })
      ended?.(result)
      this.#finishOutbound(start, {
        ...logged,
        bytesSent: result.aToB,
        bytesReceived: result.bToA,
        outcome: result.outcome,
        ...(result.error ? { reason: result.error.message } : {}),
      })
    })
    dropIgnore(app)
  }

  /** The same-node fast path: `local` serves the destination; it authorizes, and the sockets are spliced here. */
  async #routeLocal(app: Socket, local: WorkloadProxyImpl, route: MeshRoute): Promise<void> {
    const { target, address, port, service, start, earlyClose, refuse } = route
    const destination: SocketAddress = { address, port, family: address.includes(':') ? 6 : 4 }
    const sourceAddress = this.#sourceAddressFor(address).sourceAddress ?? start.source.address
    const accepted = await local.acceptLocal({ identity: this.identity, address: sourceAddress }, destination, start.tracked.connecting())
    const logged = {
      protocol: 'local' as const,
      destination: { address, port, workload: target.name, namespace: target.namespace, identity: workloadIdentity(target) },
      ...(service ? { service } : {}),
    }
    if (!accepted.ok) return refuse(accepted.reason, accepted.outcome, { ...logged, ...(accepted.policy ? { policy: accepted.policy } : {}) })
    app.off('close', earlyClose)
    start.tracked.established(app)
    this.#spliceOutboundSockets(app, accepted.upstream, start, this.#outboundTunnelLabels(target), logged, accepted.done)
  }

  /**
   * The destination side of the same-node fast path (see
   * `WorkloadProxyOptions.localWorkloads`): authorizes a connection of
   * another workload proxy of this process as an HBONE tunnel from
   * `source` would be, and connects to the app. Not part of the public
   * interface: only a workload proxy, which holds the source's identity,
   * may vouch for it.
   */
  async acceptLocal(source: { identity: string; address: string }, destination: SocketAddress, signal: AbortSignal): Promise<LocalAcceptance> {
    const started = Date.now()
    const record = (entry: Pick<AccessLogEntry, 'bytesSent' | 'bytesReceived' | 'outcome'> & Partial<AccessLogEntry>): void =>
      this.#record({
        listener: 'inbound-hbone',
        protocol: 'local',
        source: { ...this.#peer(source.address, undefined), identity: source.identity },
        destination: { address: destination.address, port: destination.port, workload: this.workload.name, namespace: this.workload.namespace, identity: this.identity },
        durationMs: Date.now() - started,
        ...entry,
      })
    if (this.#draining || this.#closing !== undefined) {
      // As an HBONE client would meet a GOAWAY and then a closed listener.
      const reason = `${this.workload.namespace}/${this.workload.name}'s proxy is ${this.#closing !== undefined ? 'closed' : 'draining'}`
      record({ bytesSent: 0, bytesReceived: 0, outcome: 'refused', reason })
      return { ok: false, outcome: 'refused', reason }
    }
    const decision = this.#decide(destination, source.address, source.identity)
    if (decision.action !== 'serve') {
      const outcome = decision.action === 'deny' ? 'denied' : 'refused'
      const policy = decision.action === 'deny' ? decision.policy : undefined
      record({ bytesSent: 0, bytesReceived: 0, outcome, reason: decision.reason, ...(policy ? { policy } : {}) })
      return { ok: false, outcome, reason: `${outcome} by the destination's proxy: ${decision.reason}`, ...(policy ? { policy } : {}) }
    }
    let upstream: Socket
    try {
      upstream = await this.#connectApp(destination, signal, source.address)
    } catch (err) {
      const reason = `connect to the app failed: ${(err as Error).message}`
      record({ bytesSent: 0, bytesReceived: 0, outcome: 'failed', reason })
      return { ok: false, outcome: 'failed', reason }
    }
    // Resetting the upstream resets the source's socket too (see startSocketSplice).
    const tracked = new TrackedConnection('inbound-hbone', decision.context as AuthorizationConnection)
    tracked.established(upstream)
    this.#track(tracked)
    const labels = this.#inboundHboneLabels(source.identity, source.address)
    this.#options.metrics?.connectionOpened(labels)
    return {
      ok: true,
      upstream,
      done: (result) => {
        this.#untrack(tracked)
        this.#options.metrics?.connectionClosed(labels, { sent: result.aToB, received: result.bToA })
        record({ bytesSent: result.aToB, bytesReceived: result.bToA, outcome: terminatedOr(tracked, result.outcome), ...(decision.policy ? { policy: decision.policy } : {}) })
      },
    }
  }

  #outboundTunnelLabels(target: Workload): ConnectionLabels {
    return this.#labels('source', { identity: this.identity, workload: this.workload }, { identity: workloadIdentity(target), workload: target }, 'mutual_tls')
  }

  #isOwnListener(destination: SocketAddress): boolean {
    const ports = Object.values(this.#ports)
    if (!ports.includes(destination.port)) return false
    return destination.address === '127.0.0.1' || destination.address === '::1' || this.workload.addresses.includes(destination.address)
  }

  #sourceAddressFor(destination: string): { sourceAddress?: string } {
    const family6 = destination.includes(':')
    const own = this.workload.addresses.find((a) => a.includes(':') === family6)
    return own === undefined ? {} : { sourceAddress: own }
  }

  // ---- inbound ------------------------------------------------------------

  #authorize(connection: AuthorizationConnection): AuthorizationDecision {
    return evaluateAuthorization(this.#options.policies.list(), connection)
  }

  #decideInbound(request: HboneRequest): HboneDecision {
    return this.#decide(request.destination, request.peerAddress.address, request.peerIdentity)
  }

  /** Authorizes a connection from `peerIdentity` at `peerAddress`: an HBONE tunnel, or a same-node handover. */
  #decide(destination: SocketAddress, peerAddress: string, peerIdentity: string): HboneDecision {
    if (this.#isOwnListener(destination)) {
      return { action: 'not-served', reason: `${formatSocketAddress(destination)} is the proxy itself (loop)` }
    }
    if (!this.workload.addresses.includes(destination.address)) {
      return { action: 'not-served', reason: `${destination.address} is not an address of ${this.workload.namespace}/${this.workload.name}` }
    }
    const connection: AuthorizationConnection = {
      sourceIp: peerAddress,
      sourceIdentity: peerIdentity,
      destinationIp: destination.address,
      destinationPort: destination.port,
      destination: this.workload,
    }
    const decision = this.#authorize(connection)
    if (!decision.allowed) {
      const policy = decision.policy ? `${decision.policy.namespace}/${decision.policy.name}` : undefined
      this.#denied(peerIdentity, policy ?? decision.reason, 'inbound-hbone')
      return { action: 'deny', reason: decision.reason, ...(policy ? { policy } : {}) }
    }
    return { action: 'serve', context: connection, ...(decision.policy ? { policy: `${decision.policy.namespace}/${decision.policy.name}` } : {}) }
  }

  /** The upstream of an authorized HBONE tunnel; tracked so a policy change can close it. */
  async #connectTunnelUpstream(destination: SocketAddress, signal: AbortSignal, request: HboneRequest, authorization: AuthorizationConnection): Promise<Socket> {
    const app = await this.#connectApp(destination, signal, request.forwardedFor ?? request.peerAddress.address)
    // Resetting the upstream resets the tunnel's stream too (see spliceTunnel).
    const tracked = new TrackedConnection('inbound-hbone', authorization)
    tracked.established(app)
    this.#track(tracked)
    app.on('close', () => this.#untrack(tracked))
    this.#options.metrics?.connectionOpened(this.#inboundHboneLabels(request.peerIdentity, request.peerAddress.address))
    return app
  }

  /** The upstream of an authorized tunnel on the native data path: a bare descriptor, tracked through its tunnel. */
  async #connectNativeUpstream(destination: SocketAddress, { signal, request, context, tunnel }: NativeUpstreamConnectOptions): Promise<number> {
    const fd = await this.#options.netns.connectFd(this.#appConnectOptions(destination, signal, request.forwardedFor ?? request.peerAddress.address))
    // Resetting the tunnel resets the app's connection too.
    const tracked = new TrackedConnection('inbound-hbone', context as AuthorizationConnection)
    tracked.established(tunnel)
    this.#track(tracked)
    tunnel.onClose(() => this.#untrack(tracked))
    this.#options.metrics?.connectionOpened(this.#inboundHboneLabels(request.peerIdentity, request.peerAddress.address))
    return fd
  }

  #inboundHboneLabels(peerIdentity: string, peerAddress: string): ConnectionLabels {
    return this.#labels('destination', { identity: peerIdentity, workload: this.#options.registry.workloadByAddress(peerAddress) }, { identity: this.identity, workload: this.workload }, 'mutual_tls')
  }

  #onTunnelEnd(record: HboneTunnelRecord): void {
    if (record.status === 200) {
      this.#options.metrics?.connectionClosed(this.#inboundHboneLabels(record.peerIdentity, record.peerAddress.address), { sent: record.bytesReceived, received: record.bytesSent })
    }
    const outcome: ConnectionOutcome =
      record.status === 401 ? 'denied'
      : record.status === 400 || record.status === 503 && record.reason !== 'upstream-connect-failed' ? 'refused'
      : record.status !== 200 ? 'failed'
      : record.outcome === 'closed' ? 'closed' : 'reset'
    this.#record({
      listener: 'inbound-hbone',
      protocol: 'HBONE',
      source: { ...this.#peer(record.peerAddress.address, record.peerAddress.port), identity: record.peerIdentity },
      destination: {
        address: record.destination?.address ?? record.authority ?? 'unknown',
        ...(record.destination ? { port: record.destination.port } : {}),
        workload: this.workload.name,
        namespace: this.workload.namespace,
        identity: this.identity,
      },
      bytesSent: record.bytesReceived,
      bytesReceived: record.bytesSent,
      durationMs: record.durationMs,
      outcome,
      ...(record.reason ? { reason: record.reason } : {}),
      ...(record.policy ? { policy: record.policy } : {}),
    })
  }

  /** Connects to the app inside the pod, as the proxy (mark 0x539) and optionally as the client. */
  async #connectApp(destination: SocketAddress, signal: AbortSignal, clientAddress: string | undefined): Promise<Socket> {
    return dial(this.#options.netns, this.#appConnectOptions(destination, signal, clientAddress))
  }

  /** How the proxy connects to its app: marked 0x539, from `clientAddress` when preserving the source. */
  #appConnectOptions(destination: SocketAddress, signal: AbortSignal, clientAddress: string | undefined): NetnsConnectFdOptions {
    const preserve = this.#options.preserveSourceAddress === true && clientAddress !== undefined
    return {
      host: destination.address,
      port: destination.port,
      mark: PROXY_MARK,
      signal,
      ...(preserve ? { localAddress: clientAddress, transparent: true } : {}),
    }
  }

  #onInboundPlaintext(client: Socket): void {
    const started = Date.now()
    const source = this.#peer(client.remoteAddress, client.remotePort)
    client.on('error', ignore)
    const destination = this.#originalDestinationOrReset(client, 'inbound')
    if (destination === undefined) return
    const destinationPeer = { address: destination.address, port: destination.port, workload: this.workload.name, namespace: this.workload.namespace }
    const connection: AuthorizationConnection = {
      sourceIp: source.address,
      destinationIp: destination.address,
      destinationPort: destination.port,
      destination: this.workload,
    }
    const record = (entry: Pick<AccessLogEntry, 'bytesSent' | 'bytesReceived' | 'outcome'> & Partial<AccessLogEntry>): void =>
      this.#record({ listener: 'inbound-plaintext', protocol: 'TCP', source, destination: destinationPeer, durationMs: Date.now() - started, ...entry })
    if (this.#isOwnListener(destination)) {
      // Only the pod itself reaches these ports unredirected: passing it on would loop.
      client.resetAndDestroy()
      record({ bytesSent: 0, bytesReceived: 0, outcome: 'refused', reason: `destination ${formatSocketAddress(destination)} is the proxy itself (loop)` })
      return
    }
    const decision: AuthorizationDecision =
      this.#options.inboundPlaintext === 'strict' ? { allowed: false, reason: 'no-allow-policy-matched' } : this.#authorize(connection)
    if (!decision.allowed) {
      const policy = decision.policy ? `${decision.policy.namespace}/${decision.policy.name}` : undefined
      this.#denied('', policy ?? (this.#options.inboundPlaintext === 'strict' ? 'strict' : decision.reason), 'inbound-plaintext')
      client.resetAndDestroy()
      record({ bytesSent: 0, bytesReceived: 0, outcome: 'denied', reason: this.#options.inboundPlaintext === 'strict' ? 'plaintext refused (strict mode)' : decision.reason, ...(policy ? { policy } : {}) })
      return
    }
    const tracked = new TrackedConnection('inbound-plaintext', connection)
    this.#track(tracked)
    const earlyClose = (): void => tracked.terminate('client closed before the app answered')
    client.once('close', earlyClose)
    const labels = this.#labels('destination', { workload: undefined }, { identity: this.identity, workload: this.workload }, 'none')
    const policy = decision.policy ? `${decision.policy.namespace}/${decision.policy.name}` : undefined
    void this.#connectApp(destination, tracked.connecting(), this.#options.preserveSourceAddress ? source.address : undefined).then(
      (app) => {
        client.off('close', earlyClose)
        tracked.established(client)
        this.#options.metrics?.connectionOpened(labels)
        startSocketSplice(client, app, (result) => {
          this.#options.metrics?.connectionClosed(labels, { sent: result.aToB, received: result.bToA })
          this.#untrack(tracked)
          record({ bytesSent: result.aToB, bytesReceived: result.bToA, outcome: terminatedOr(tracked, result.outcome), ...(policy ? { policy } : {}) })
        })
        dropIgnore(client)
      },
      (err: Error) => {
        this.#untrack(tracked)
        client.resetAndDestroy()
        record({ bytesSent: 0, bytesReceived: 0, outcome: 'failed', reason: `connect to the app failed: ${err.message}` })
      },
    )
  }

  /** Policies changed: close established inbound connections they now deny. */
  #reauthorize(): void {
    for (const connection of this.#connections) {
      if (connection.authorization === undefined) continue
      const decision = this.#authorize(connection.authorization)
      if (!decision.allowed) {
        const by = decision.policy ? `${decision.policy.namespace}/${decision.policy.name}` : decision.reason
        this.#log.info({ by }, 'policy change denies an established connection: closing it')
        connection.terminatedBy = by
        connection.terminate(`denied after a policy change (${by})`)
      }
    }
  }

  // ---- bookkeeping --------------------------------------------------------

  #peer(address: string | undefined, port: number | undefined): AccessLogEntry['source'] {
    const ip = (address && tryCanonicalIp(address)) || address || 'unknown'
    const workload = this.#options.registry.workloadByAddress(ip)
    return { address: ip, ...(port ? { port } : {}), ...(workload ? { workload: workload.name, namespace: workload.namespace } : {}) }
  }

  #labels(
    reporter: 'source' | 'destination',
    source: { identity?: string; workload: Workload | undefined },
    destination: { identity?: string; workload: Workload | undefined },
    security: 'mutual_tls' | 'none',
  ): ConnectionLabels {
    return {
      reporter,
      source_workload: source.workload?.name ?? 'unknown',
      source_workload_namespace: source.workload?.namespace ?? 'unknown',
      source_principal: source.identity ?? 'unknown',
      destination_workload: destination.workload?.name ?? 'unknown',
      destination_workload_namespace: destination.workload?.namespace ?? 'unknown',
      destination_principal: destination.identity ?? 'unknown',
      connection_security_policy: security,
    }
  }

  #denied(principal: string, policy: string, listener: ProxyListener): void {
    this.#options.metrics?.authorizationDenied({
      destination_workload: this.workload.name,
      destination_workload_namespace: this.workload.namespace,
      source_principal: principal || 'unknown',
      policy,
      listener,
    })
  }

  /** One access-log entry: to the callback when there is one, else one `info` line. */
  #record(entry: AccessLogEntry): void {
    if (this.#options.accessLog !== undefined) this.#options.accessLog(entry)
    else this.#log.info({ access: entry }, 'connection')
  }

  async drain(options: { deadline?: number } = {}): Promise<void> {
    this.#draining = true
    this.#stopListening()
    // GOAWAY on inbound sessions: peers open new tunnels elsewhere, open ones finish.
    void this.#hboneServer?.drain()
    if (this.#connections.size > 0) {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        new Promise<void>((resolve) => this.#idleWaiters.push(resolve)),
        new Promise<void>((resolve) => (timer = setTimeout(resolve, options.deadline ?? 5000))),
      ])
      clearTimeout(timer)
    }
    await this.close()
  }

  /**
   * Stops accepting. Does not wait for `net.Server`'s close callback: that
   * waits for every accepted connection, which drain and close handle themselves.
   */
  #stopListening(): void {
    for (const server of this.#servers.splice(0)) server.close()
    if (this.#outbound.path === 'native') for (const acceptor of this.#acceptors.splice(0)) this.#outbound.addon.stopAccepting(acceptor)
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#unsubscribe()
      this.#stopListening()
      for (const connection of this.#connections) connection.terminate('workload proxy closed')
      await Promise.all([this.#hboneServer?.close(), this.#outbound.client.close()])
      // Whatever is left (a connection still waiting for its upstream) is reset.
      for (const socket of this.#accepted) socket.resetAndDestroy()
    })()
    return this.#closing
  }
}

/**
 * A proxy connection from inside the pod: marked 0x539 so capture lets it
 * pass, half-open allowed by default (a spliced FIN is forwarded, not answered), and without
 * Nagle, since a proxy must not hold back small writes its peers already sent.
 */
async function dial(netns: Netns, options: Omit<NetnsConnectOptions, 'mark' | 'allowHalfOpen'>, allowHalfOpen = true): Promise<Socket> {
  const socket = await netns.connect({ ...options, mark: PROXY_MARK, allowHalfOpen })
  socket.setNoDelay(true)
  return socket
}

/** The `error` listener of an accepted socket until its splice listens for errors. */
function ignore(): void {}

/** The splice listens for errors now: one listener rather than two spares the socket an array of them. */
function dropIgnore(socket: Socket): void {
  socket.off('error', ignore)
}

/** What the destination's proxy answered to a same-node handover. */
type LocalAcceptance =
  | { ok: true; upstream: Socket; done: (result: SocketSpliceResult) => void }
  | { ok: false; outcome: ConnectionOutcome; reason: string; policy?: string }

function terminatedOr(connection: TrackedConnection, outcome: 'closed' | 'reset'): ConnectionOutcome {
  return connection.terminatedBy !== undefined ? 'terminated' : outcome
}
