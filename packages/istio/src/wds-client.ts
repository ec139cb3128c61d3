import type { ComponentRegistry } from './component'
import { existsSync, readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { checkServerIdentity, type PeerCertificate } from 'node:tls'
import * as grpc from '@grpc/grpc-js'
import {
  AmbientError,
  abortError,
  CoreErrorCode,
  invalidArgument,
  silentLogger,
  throwIfAborted,
  type AbortOptions,
  type Closable,
  type Logger,
  type PolicyStore,
  type WorkloadRegistry,
} from '@ambientkit/core'
import { IstioErrorCode } from './errors'
import { sleep } from './sleep'
import { adsServiceDefinition, DELTA_ADS_METHOD } from './protos'
import {
  ADDRESS_TYPE_URL,
  AUTHORIZATION_TYPE_URL,
  DEFAULT_LIMITS,
  WdsState,
  type RejectedResource,
  type WdsLimits,
  type WdsStateDump,
} from './wds-state'
import type { DeltaDiscoveryRequest, DeltaDiscoveryResponse, ProtoValue } from './xds-types'

/** A JSON value, for node metadata sent typed (ztunnel's `ISTIO_METAJSON_*`). */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue }

/** Who the client says it is to istiod: the xDS node of ztunnel. */

/** istiod's service name, in the certificate istiod serves: the TLS server name for an address given as an IP. */
const ISTIOD_SERVICE_NAME = 'istiod.istio-system.svc'

export interface WdsNode {
  /** This proxy's IP (ztunnel's `INSTANCE_IP`). Default `'1.1.1.1'`, as ztunnel's. */
  readonly ip?: string
  /** The pod running this client (`POD_NAME`). Default `''`. */
  readonly podName?: string
  /** Its namespace (`POD_NAMESPACE`); istiod checks it against the token's. Default `''`. */
  readonly podNamespace?: string
  /** The node's name (`NODE_NAME`). Default `''`. */
  readonly nodeName?: string
  /**
   * More node metadata (ztunnel's `ISTIO_META_<KEY>` and `ISTIO_METAJSON_<KEY>`
   * variables, proxyMetadata): istiod reads `CLUSTER_ID`, `ISTIO_VERSION`,
   * `SERVICE_ACCOUNT`, `NETWORK` among others. Default none.
   */
  readonly metadata?: Readonly<Record<string, JsonValue>>
}

/** Where the bearer token sent to istiod comes from (ztunnel's `AUTH_TOKEN`). */
export type WdsToken =
  /** A file read again on every connection (a projected token rotates); a missing file sends no token, an empty one is an error. */
  | { readonly file: string }
  /** A static token. */
  | { readonly value: string }
  /** No `authorization` header (istiod's plaintext port 15010). */
  | false

/** Options of {@link createWdsClient}. */
export interface WdsClientOptions {
  /** Where istiod's workloads and services go. The client owns the entries it writes (keyed by Istio's uids and `namespace/hostname`). */
  readonly registry: WorkloadRegistry
  /** Where istiod's authorization policies go (keyed `namespace/name`); other policies in the store are left alone. */
  readonly policies: PolicyStore
  /**
   * istiod's address (`XDS_ADDRESS`): `https://host:port` for TLS (port 15012),
   * `http://host:port` for plaintext (port 15010, no auth); `https://` is
   * assumed without a scheme. Default `'https://localhost:15012'`.
   */
  readonly address?: string
  /**
   * The CA that signs istiod's certificate (`XDS_ROOT_CA`): a file path,
   * inline PEM, or `'SYSTEM'` for the operating system's roots. Read again on
   * every connection. Default `'./var/run/secrets/istio/root-cert.pem'`
   * (relative to the working directory, `/` in ztunnel's image).
   */
  readonly rootCert?: string
  /**
   * Another name accepted in istiod's certificate (`ALT_XDS_HOSTNAME`).
   * Default none: the address's host only. When the address is an IP
   * address it is also the TLS server name sent (SNI carries no literal
   * addresses, RFC 6066 §3), else `istiod.istio-system.svc`.
   */
  readonly altHostname?: string
  /** Default `{ file: './var/run/secrets/tokens/istio-token' }`. */
  readonly token?: WdsToken
  /** Sent as the `clusterid` header (`ISTIO_META_CLUSTER_ID`, else `CLUSTER_ID`). Default `'Kubernetes'`. */
  readonly clusterId?: string
  /** More request headers (`XDS_HEADER_<NAME>`). Default none. */
  readonly headers?: Readonly<Record<string, string>>
  /** Default: all defaults of {@link WdsNode}. */
  readonly node?: WdsNode
  /** Default {@link DEFAULT_WDS_LIMITS}. */
  readonly limits?: WdsLimits
  /** Reconnection backoff, doubling from `initialMs` to `maxMs`. Default ztunnel's: 10 ms to 15 s. */
  readonly backoff?: { readonly initialMs?: number; readonly maxMs?: number }
  /** How long to wait for the TCP and TLS handshakes. Default 5000 ms. */
  readonly connectTimeoutMs?: number
  /**
   * A node proxy to register with (as `wds`): its `/healthz/ready` waits
   * until both types have had a response ACKed (ztunnel's readiness), and
   * its `/config_dump` shows {@link WdsClient.configDump}, waypoints and
   * network gateways included. Unregistered on `close()`. Default none.
   */
  readonly nodeProxy?: ComponentRegistry
  /** Default: silent. */
  readonly logger?: Logger
}

/** Something the client did, for subscribers (logs, metrics, tests). */
export type WdsEvent =
  | { readonly type: 'connected'; readonly connection: number }
  | {
      readonly type: 'response'
      readonly typeUrl: string
      readonly nonce: string
      readonly resources: number
      readonly removed: number
      /** Empty: ACKed. Otherwise NACKed with these reasons, the other resources applied. */
      readonly rejected: readonly RejectedResource[]
    }
  | {
      readonly type: 'disconnected'
      readonly connection: number
      /** ztunnel's `istio_xds_connection_terminations_total` reasons. */
      readonly reason: WdsTerminationReason
      readonly error?: AmbientError
      /** When the next attempt starts. */
      readonly retryInMs: number
    }

/** Why a stream ended: `ConnectionError` (never established), `Reconnect` (istiod rebalancing), `Error` (other failures), `Complete` (ended cleanly). */
export type WdsTerminationReason = 'ConnectionError' | 'Reconnect' | 'Error' | 'Complete'

/** What `/config_dump` shows of the client. */
export interface WdsConfigDump extends WdsStateDump {
  readonly xds: {
    readonly address: string
    readonly connected: boolean
    readonly ready: boolean
    readonly connections: number
    readonly terminations: Readonly<Record<WdsTerminationReason, number>>
    readonly lastError?: string
    readonly types: Readonly<Record<string, {
      readonly resources: number
      readonly acks: number
      readonly nacks: number
      readonly lastNonce?: string
      readonly lastNack?: string
    }>>
  }
}

/** Workloads, services and authorization policies from istiod over delta xDS, as ztunnel takes them. */
export interface WdsClient extends Closable {
  /**
   * Starts the stream (once; later calls only wait) and resolves when every
   * type has had its first response ACKed: ztunnel's readiness. The client
   * keeps reconnecting until {@link close}; the signal only stops the wait.
   */
  start(options?: AbortOptions): Promise<void>
  /** True once every type has had a response ACKed; stays true while reconnecting (the state is kept). */
  ready(): boolean
  /** Calls `listener` on every event; returns the function that unsubscribes. */
  subscribe(listener: (event: WdsEvent) => void): () => void
  /** Everything held, with what core's model does not express (waypoints, networks, gateways...), for the node proxy's `/config_dump`. */
  configDump(): WdsConfigDump
  /** Ends the stream and stops reconnecting. The registry and policy store keep what they hold. Idempotent. */
  close(): Promise<void>
}

/** Default bounds of {@link WdsLimits}. */
export const DEFAULT_WDS_LIMITS: Readonly<Required<WdsLimits>> = DEFAULT_LIMITS

const TYPES = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL]

/**
 * Creates a WDS client: istiod's workloads, services and authorization
 * policies, kept in core's registry and policy store.
 *
 * @example
 * ```ts
 * import { createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
 * import { createWdsClient, wdsOptionsFromEnv } from '@ambientkit/istio'
 *
 * const registry = createWorkloadRegistry()
 * const policies = createPolicyStore()
 * const wds = createWdsClient({ ...wdsOptionsFromEnv(), registry, policies })
 * await wds.start() // every type received and ACKed once
 * registry.workloadByAddress('10.1.0.5') // a pod istiod knows
 * ```
 */
export function createWdsClient(options: WdsClientOptions): WdsClient {
  return new WdsClientImpl(options)
}

interface TypeStats {
  acks: number
  nacks: number
  lastNonce?: string
  lastNack?: string
}

interface StreamEnd {
  established: boolean
  status?: grpc.StatusObject
  error?: AmbientError
}

class WdsClientImpl implements WdsClient {
  readonly #options: WdsClientOptions
  readonly #log: Logger
  readonly #state: WdsState
  readonly #target: { address: string; host: string; grpcTarget: string; secure: boolean }
  readonly #limits: Required<WdsLimits>
  readonly #listeners = new Set<(event: WdsEvent) => void>()
  readonly #stats = new Map<string, TypeStats>(TYPES.map((t) => [t, { acks: 0, nacks: 0 }]))
  readonly #terminations: Record<WdsTerminationReason, number> = { ConnectionError: 0, Reconnect: 0, Error: 0, Complete: 0 }
  readonly #awaiting = new Set(TYPES)
  /** Pending start() calls: called with nothing once ready, with an error when closed first. */
  readonly #readyWaiters = new Set<(error?: Error) => void>()
  readonly #stop = new AbortController()
  #running: Promise<void> | undefined
  #connections = 0
  #connected = false
  #lastError: string | undefined
  #call: grpc.ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> | undefined
  #unregister: (() => void) | undefined

  constructor(options: WdsClientOptions) {
    if (typeof options?.registry?.upsertWorkload !== 'function') throw invalidArgument('registry', options?.registry, 'a WorkloadRegistry')
    if (typeof options.policies?.update !== 'function') throw invalidArgument('policies', options.policies, 'a PolicyStore')
    this.#options = options
    this.#target = parseAddress(options.address ?? 'https://localhost:15012')
    this.#limits = { ...DEFAULT_LIMITS, ...options.limits }
    for (const [name, value] of Object.entries(this.#limits)) {
      if (!Number.isSafeInteger(value) || value < 1) throw invalidArgument(`limits.${name}`, value, 'a positive integer')
    }
    this.#log = (options.logger ?? silentLogger).child({ component: 'wds', xds: this.#target.address })
    this.#state = new WdsState(options.registry, options.policies, this.#limits, this.#log)
    this.#unregister = options.nodeProxy?.register({ name: 'wds', notReady: () => this.#notReady(), configDump: () => this.configDump() })
  }

  /** Why the node is not ready on account of this client, or `undefined`. */
  #notReady(): string | undefined {
    if (this.ready()) return undefined
    const waiting = [...this.#awaiting].map((typeUrl) => typeUrl.slice(typeUrl.lastIndexOf('.') + 1)).join(' and ')
    const why = this.#lastError === undefined ? '' : ` (last error: ${this.#lastError})`
    return `no ${waiting} from istiod at ${this.#target.address} ACKed yet${why}`
  }

  async start(options: AbortOptions = {}): Promise<void> {
    throwIfAborted(options.signal, 'WDS start')
    if (this.#stop.signal.aborted) throw new AmbientError(CoreErrorCode.Closed, 'the WDS client is closed')
    this.#running ??= this.#run()
    if (this.ready()) return
    const signal = options.signal
    await new Promise<void>((resolve, reject) => {
      const done = (error?: Error): void => {
        this.#readyWaiters.delete(done)
        signal?.removeEventListener('abort', onAbort)
        if (error === undefined) resolve()
        else reject(error)
      }
      const onAbort = (): void => {
        this.#readyWaiters.delete(done)
        reject(abortError(signal!, 'WDS start'))
      }
      this.#readyWaiters.add(done)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  ready(): boolean {
    return this.#awaiting.size === 0
  }

  subscribe(listener: (event: WdsEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  #emit(event: WdsEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event)
      } catch (err) {
        this.#log.error({ err }, 'a WDS event listener threw')
      }
    }
  }

  async #run(): Promise<void> {
    const initial = this.#options.backoff?.initialMs ?? 10
    const max = this.#options.backoff?.maxMs ?? 15_000
    let backoff = initial
    while (!this.#stop.signal.aborted) {
      const connection = ++this.#connections
      const end = await this.#connectOnce(connection)
      this.#connected = false
      if (this.#stop.signal.aborted) return
      // ztunnel's rules (xds/client.rs run_loop): istiod rebalancing is retried at once,
      // other failures with a doubling backoff, and a clean end immediately.
      let reason: WdsTerminationReason
      let delay: number
      if (!end.established) {
        reason = 'ConnectionError'
        delay = backoff = Math.min(max, backoff * 2)
      } else if (end.status === undefined || end.status.code === grpc.status.OK) {
        reason = 'Complete'
        delay = 0
        backoff = initial
      } else if (isRebalance(end.status)) {
        reason = 'Reconnect'
        delay = backoff = initial
      } else {
        reason = 'Error'
        delay = backoff = Math.min(max, backoff * 2)
      }
      this.#terminations[reason]++
      if (end.error !== undefined) this.#lastError = end.error.message
      const log = reason === 'Reconnect' || reason === 'Complete' ? this.#log.debug : this.#log.warn
      log.call(this.#log, { err: end.error, reason, retryInMs: delay }, 'xDS stream ended')
      this.#emit({ type: 'disconnected', connection, reason, ...(end.error ? { error: end.error } : {}), retryInMs: delay })
      if (delay > 0) await sleep(delay, this.#stop.signal)
    }
  }

  /** One stream, from connecting to its end. Never rejects. */
  async #connectOnce(connection: number): Promise<StreamEnd> {
    let client: grpc.Client
    let metadata: grpc.Metadata
    try {
      metadata = this.#metadata()
      client = new grpc.Client(this.#target.grpcTarget, this.#credentials(), {
        'grpc.max_receive_message_length': this.#limits.maxMessageBytes,
        'grpc.keepalive_time_ms': 30_000,
        'grpc.keepalive_timeout_ms': 10_000,
        'grpc.enable_retries': 0,
        // A connection of its own per attempt, as ztunnel builds a channel per attempt.
        'grpc.use_local_subchannel_pool': 1,
        ...this.#serverName(),
      })
    } catch (err) {
      return { established: false, error: err as AmbientError }
    }
    try {
      const reached = await channelReady(client, this.#options.connectTimeoutMs ?? 5000, this.#stop.signal)
      if (!reached) {
        return { established: false, error: streamError('connect', grpc.status.DEADLINE_EXCEEDED, `no connection to ${this.#target.address} within ${this.#options.connectTimeoutMs ?? 5000} ms`) }
      }
      if (this.#stop.signal.aborted) return { established: true }
      return await this.#stream(client, metadata, connection)
    } finally {
      client.close()
    }
  }

  #stream(client: grpc.Client, metadata: grpc.Metadata, connection: number): Promise<StreamEnd> {
    const method = adsServiceDefinition().DeltaAggregatedResources!
    const call = client.makeBidiStreamRequest(
      DELTA_ADS_METHOD,
      method.requestSerialize as (value: DeltaDiscoveryRequest) => Buffer,
      method.responseDeserialize as (bytes: Buffer) => DeltaDiscoveryResponse,
      metadata,
    )
    this.#call = call
    let established = false
    return new Promise<StreamEnd>((resolve) => {
      const onAbort = (): void => call.cancel()
      this.#stop.signal.addEventListener('abort', onAbort, { once: true })
      call.on('metadata', () => {
        established = true
        this.#connected = true
        this.#log.info({ connection }, 'xDS stream established')
        this.#emit({ type: 'connected', connection })
      })
      call.on('data', (response: DeltaDiscoveryResponse) => {
        // Headers come before the first response; a server that sends none is established all the same.
        established = true
        this.#respond(call, response)
      })
      // Every end is reported by 'status'; 'error' only repeats it.
      call.on('error', () => undefined)
      call.on('status', (status: grpc.StatusObject) => {
        this.#stop.signal.removeEventListener('abort', onAbort)
        this.#call = undefined
        const error = status.code === grpc.status.OK ? undefined : streamError(established ? 'stream' : 'connect', status.code, status.details)
        resolve({ established, status, ...(error ? { error } : {}) })
      })
      // One initial request per type, in ztunnel's order, each with the versions held.
      const node = this.#node()
      for (const typeUrl of TYPES) call.write({ typeUrl, node, initialResourceVersions: this.#state.versions(typeUrl) })
    })
  }

  /** Applies one response, then sends its ACK or NACK: the state changes before the reply, as in ztunnel. */
  #respond(call: grpc.ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>, response: DeltaDiscoveryResponse): void {
    const { typeUrl, nonce } = response
    let rejected: RejectedResource[] = []
    const stats = this.#stats.get(typeUrl)
    if (stats === undefined) {
      this.#log.error({ typeUrl }, 'xDS response of an unknown type; acknowledged and ignored')
    } else {
      try {
        rejected = this.#state.apply(typeUrl, response.resources, response.removedResources)
      } catch (err) {
        this.#log.error({ err, typeUrl }, 'cannot apply an xDS response')
        rejected = [{ name: 'response', reason: `internal error: ${(err as Error).message}` }]
      }
    }
    const message = rejected.map((r) => `${r.name}: ${r.reason}`).join('; ')
    if (rejected.length > 0) this.#log.error({ typeUrl, nonce, error: message }, 'sending NACK')
    call.write({ typeUrl, responseNonce: nonce, ...(rejected.length > 0 ? { errorDetail: { code: 0, message } } : {}) })
    if (stats !== undefined) {
      stats.lastNonce = nonce
      if (rejected.length > 0) {
        stats.nacks++
        stats.lastNack = message
      } else {
        stats.acks++
        if (this.#awaiting.delete(typeUrl) && this.#awaiting.size === 0) {
          this.#log.info({}, 'WDS ready')
          for (const waiter of [...this.#readyWaiters]) waiter()
        }
      }
    }
    this.#emit({ type: 'response', typeUrl, nonce, resources: response.resources.length, removed: response.removedResources.length, rejected })
  }

  #node(): NonNullable<DeltaDiscoveryRequest['node']> {
    const node = this.#options.node ?? {}
    const namespace = node.podNamespace ?? ''
    const ip = node.ip ?? '1.1.1.1'
    const fields: Record<string, ProtoValue> = {
      NAME: { stringValue: node.podName ?? '' },
      NAMESPACE: { stringValue: namespace },
      INSTANCE_IPS: { stringValue: ip },
      NODE_NAME: { stringValue: node.nodeName ?? '' },
    }
    for (const [key, value] of Object.entries(node.metadata ?? {})) fields[key] = protoValue(value)
    // The node id istiod parses: type~ip~id~domain (the domain suffix is literal in ztunnel).
    return { id: `ztunnel~${ip}~${node.podName ?? ''}.${namespace}~${namespace}.svc.cluster.local`, metadata: { fields } }
  }

  #metadata(): grpc.Metadata {
    const metadata = new grpc.Metadata()
    const token = this.#token()
    if (token !== undefined) metadata.set('authorization', `Bearer ${token}`)
    metadata.set('clusterid', this.#options.clusterId ?? 'Kubernetes')
    for (const [name, value] of Object.entries(this.#options.headers ?? {})) metadata.set(name.toLowerCase(), value)
    return metadata
  }

  #token(): string | undefined {
    const token = this.#options.token ?? { file: './var/run/secrets/tokens/istio-token' }
    if (token === false) return undefined
    if ('value' in token) return token.value
    // Read on every connection: a projected token is rotated in place.
    if (!existsSync(token.file)) return undefined
    let text: string
    try {
      text = readFileSync(token.file, 'utf8').trim()
    } catch (err) {
      throw new AmbientError(IstioErrorCode.Credentials, `cannot read the istiod token ${token.file}: ${(err as Error).message}`, { cause: err, details: { path: token.file } })
    }
    if (text === '') throw new AmbientError(IstioErrorCode.Credentials, `the istiod token file ${token.file} is empty`, { details: { path: token.file } })
    return text
  }

  #credentials(): grpc.ChannelCredentials {
    if (!this.#target.secure) return grpc.credentials.createInsecure()
    const root = this.#options.rootCert ?? './var/run/secrets/istio/root-cert.pem'
    let pem: Buffer | null
    if (root === 'SYSTEM') pem = null
    else if (root.includes('-----BEGIN')) pem = Buffer.from(root)
    else {
      try {
        pem = readFileSync(root)
      } catch (err) {
        throw new AmbientError(IstioErrorCode.Credentials, `cannot read istiod's root certificate ${root}: ${(err as Error).message}`, { cause: err, details: { path: root } })
      }
    }
    const { host } = this.#target
    const alt = this.#options.altHostname
    return grpc.credentials.createSsl(pem, null, null, {
      // The name checked is the address's host (or the alternative), whatever name the TLS hello carried.
      checkServerIdentity: (_sent: string, cert: PeerCertificate) => {
        const error = checkServerIdentity(host, cert)
        return error === undefined || alt === undefined ? error : checkServerIdentity(alt, cert)
      },
    })
  }

  /**
   * The server name of the TLS hello when the address is an IP address: SNI
   * carries no literal addresses (RFC 6066 §3), and Node refuses one.
   */
  #serverName(): grpc.ChannelOptions {
    if (!this.#target.secure || isIP(this.#target.host) === 0) return {}
    return { 'grpc.ssl_target_name_override': this.#options.altHostname ?? ISTIOD_SERVICE_NAME }
  }

  configDump(): WdsConfigDump {
    const types: Record<string, TypeStats & { resources: number }> = {}
    for (const [typeUrl, stats] of this.#stats) types[typeUrl] = { resources: this.#state.count(typeUrl), ...stats }
    return {
      xds: {
        address: this.#target.address,
        connected: this.#connected,
        ready: this.ready(),
        connections: this.#connections,
        terminations: { ...this.#terminations },
        ...(this.#lastError === undefined ? {} : { lastError: this.#lastError }),
        types,
      },
      ...this.#state.dump(),
    }
  }

  async close(): Promise<void> {
    this.#stop.abort()
    this.#unregister?.()
    this.#unregister = undefined
    for (const waiter of [...this.#readyWaiters]) waiter(new AmbientError(CoreErrorCode.Closed, 'the WDS client was closed before it was ready'))
    this.#call?.cancel()
    await this.#running
  }
}

/** Unavailable "transport is closing" / "received prior goaway", Unknown, Cancelled, DeadlineExceeded: istiod closing a connection to rebalance. */
function isRebalance(status: grpc.StatusObject): boolean {
  switch (status.code) {
    case grpc.status.UNKNOWN:
    case grpc.status.CANCELLED:
    case grpc.status.DEADLINE_EXCEEDED:
      return true
    case grpc.status.UNAVAILABLE:
      return status.details.includes('transport is closing') || status.details.includes('received prior goaway')
    default:
      return false
  }
}

function streamError(phase: 'connect' | 'stream', code: grpc.status, details: string): AmbientError {
  return new AmbientError(IstioErrorCode.XdsStream, `xDS ${phase === 'connect' ? 'connection' : 'stream'} failed: ${grpc.status[code] ?? code}: ${details}`, {
    details: { code, codeName: grpc.status[code], phase, message: details },
  })
}

/** Resolves true once the channel is connected (or has failed, so that the call reports why), false past the timeout. */
function channelReady(client: grpc.Client, timeoutMs: number, stop: AbortSignal): Promise<boolean> {
  const channel = client.getChannel()
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve) => {
    const check = (): void => {
      if (stop.aborted) return resolve(true)
      const state = channel.getConnectivityState(true)
      if (state === grpc.connectivityState.READY || state === grpc.connectivityState.TRANSIENT_FAILURE || state === grpc.connectivityState.SHUTDOWN) return resolve(true)
      channel.watchConnectivityState(state, deadline, (err) => (err === undefined ? check() : resolve(false)))
    }
    check()
  })
}

function parseAddress(address: string): { address: string; host: string; grpcTarget: string; secure: boolean } {
  if (typeof address !== 'string' || address === '') throw invalidArgument('address', address, 'istiod\'s address, such as "https://istiod.istio-system.svc:15012"')
  const withScheme = /^[a-z]+:\/\//i.test(address) ? address : `https://${address}`
  let url: URL
  try {
    url = new URL(withScheme)
  } catch {
    throw invalidArgument('address', address, 'a URL such as "https://istiod.istio-system.svc:15012"')
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw invalidArgument('address', address, 'an https:// (TLS) or http:// (plaintext) URL')
  const secure = url.protocol === 'https:'
  const port = url.port === '' ? (secure ? '443' : '80') : url.port
  // The host without an IPv6 address's brackets: what certificates and isIP know.
  return { address: `${url.protocol}//${url.host}`, host: url.hostname.replace(/^\[(.*)\]$/, '$1'), grpcTarget: `${url.hostname}:${port}`, secure }
}

function protoValue(value: JsonValue): ProtoValue {
  if (value === null) return { nullValue: 0 }
  if (typeof value === 'string') return { stringValue: value }
  if (typeof value === 'number') return { numberValue: value }
  if (typeof value === 'boolean') return { boolValue: value }
  if (Array.isArray(value)) return { listValue: { values: value.map(protoValue) } }
  return { structValue: { fields: Object.fromEntries(Object.entries(value).map(([k, v]) => [k, protoValue(v)])) } }
}
