import type { RemoteInfo, Socket as DgramSocket } from 'node:dgram'
import type { Socket } from 'node:net'
import {
  DNS_PORT,
  invalidArgument,
  isAmbientError,
  PROXY_MARK,
  silentLogger,
  type Closable,
  type Logger,
  type NetnsSockets,
  type SocketAcceptor,
  type SocketAddress,
  type Workload,
  type WorkloadRegistry,
} from '@ambientkit/core'
import { bindUdp } from '../sockets'
import { asSocket } from '../transport/connection'
import { Forwarder } from './forwarder'
import { queryTypeLabel, type DnsDropReason, type DnsMetrics, type DnsRequestLabels } from './metrics'
import { findMeshService, kubernetesSearchDomains, normalizeName, type MeshNameMatch } from './names'
import { TcpMessageReader, writeTcpMessage } from './tcp-framing'
import { resolveUpstreams } from './upstreams'
import {
  badVersionResponse,
  buildResponse,
  dnsPacket,
  headerOnlyResponse,
  HEADER_BYTES,
  isResponse,
  isStandardQuery,
  questionRoundTrips,
  Rcode,
  truncatedResponse,
  udpLimit,
  unsupportedEdnsVersion,
  type Answer,
  type Packet,
  type Question,
} from './wire'

/** Options of {@link createDnsProxy}. */
export interface DnsProxyOptions {
  /** The captured workload whose DNS this proxy answers: its namespace decides what short names mean. */
  readonly workload: Workload
  /** The workload's network namespace: the proxy listens there, and forwards from there. */
  readonly netns: NetnsSockets
  /** Where mesh host names are looked up (`servicesByHostname`). */
  readonly registry: Pick<WorkloadRegistry, 'servicesByHostname'>
  /**
   * The resolvers everything that is not a mesh name is forwarded to, in
   * order: `"ip"` (port 53), `"ip:port"` or `"[ipv6]:port"`, reachable from
   * the pod. Default: the `nameserver` lines of {@link resolvConf}.
   */
  readonly upstreams?: readonly string[]
  /** The resolv.conf read when `upstreams` is not given (read once, at start). Default `/etc/resolv.conf`, the agent's own, as ztunnel reads its own. */
  readonly resolvConf?: string
  /** The cluster's DNS domain. Default `cluster.local`. */
  readonly clusterDomain?: string
  /**
   * The client's search domains, whose suffix is taken off a queried name
   * to find a mesh name. Default: Kubernetes' for the workload's namespace
   * (`<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`).
   */
  readonly searchDomains?: readonly string[]
  /** The port it listens on, UDP and TCP, on 127.0.0.1 and ::1: where capture redirects DNS. Default 15053. */
  readonly port?: number
  /** Listen on ::1 too. Default: when the namespace has IPv6 loopback. `true` fails when it has not. */
  readonly ipv6?: boolean
  /** `SO_MARK` of its sockets, so capture lets forwarded queries out. Default 0x539. */
  readonly mark?: number
  /** TTL of the records it answers for mesh names, in seconds (forwarded answers keep the upstream's). Default 30, as ztunnel. */
  readonly ttl?: number
  /** How long a forwarded query may take, all upstreams and the TCP fallback included, in milliseconds; then the client gets SERVFAIL. Default 4000 (under the 5 s a glibc client waits). */
  readonly timeout?: number
  /** Queries forwarded at once; more are answered SERVFAIL at once. Default 256. */
  readonly maxPendingQueries?: number
  /** TCP connections open at once; more are closed at once. Default 64. */
  readonly maxTcpConnections?: number
  /** A TCP connection idle this long (milliseconds) is closed. Default 10 000. */
  readonly tcpIdleTimeout?: number
  /** Where requests, forwards and drops are counted. Default: not counted. */
  readonly metrics?: DnsMetrics
  /** Default: silent. Failures are logged at `warn`, at most 5 lines per 10 s per proxy. */
  readonly logger?: Logger
}

/** A running DNS proxy of one workload. */
export interface DnsProxy extends Closable {
  readonly workload: Workload
  /** Where it listens inside the namespace, UDP and TCP alike. */
  readonly addresses: readonly SocketAddress[]
  /** The resolvers it forwards to. */
  readonly upstreams: readonly SocketAddress[]
  /** Queries being forwarded now, and TCP connections open. */
  stats(): { pendingQueries: number; tcpConnections: number }
  /** Stops listening, answers nothing more, closes every connection. Idempotent. */
  close(): Promise<void>
}

/** The largest query taken, over UDP or TCP: a query is one question, so this leaves room for any EDNS options. */
const MAX_QUERY_BYTES = 4096
/** Queries of one TCP connection answered at once; it is read again once one is done. */
const TCP_QUERIES_IN_FLIGHT = 16

/**
 * Starts the DNS proxy of one captured workload, as ztunnel's: inside the
 * pod's namespace, on 127.0.0.1:15053 (and [::1]:15053), UDP and TCP,
 * where capture with `captureDns` redirects the pod's DNS. A and AAAA
 * queries for mesh names (`<service>.<namespace>.svc.<cluster domain>`,
 * its short forms, names under the pod's search domains, and host names
 * of services added to the registry, `*.` wildcards included) are answered
 * from the registry with the service's VIPs; everything else is forwarded,
 * unchanged but for its ID (EDNS included), to the upstream resolvers from
 * inside the namespace with mark 0x539, so capture lets it out. A
 * truncated UDP answer is asked again over TCP; no answer in time is a
 * SERVFAIL, never silence; a message that cannot be read gets FORMERR when
 * it has a header and is dropped when not.
 *
 * @example
 * ```ts
 * import type { Workload, WorkloadRegistry } from '@ambientkit/core'
 * import { createDnsProxy, type NodeProxy } from '@ambientkit/proxy'
 * import type { Netns } from '@ambientkit/redirect'
 *
 * declare const workload: Workload // the captured pod
 * declare const netns: Netns // its network namespace: openNetns(...)
 * declare const registry: WorkloadRegistry // where mesh names are looked up
 * declare const nodeProxy: NodeProxy // whose /metrics shows the DNS proxy's
 * const dns = await createDnsProxy({ workload, netns, registry, upstreams: ['10.96.0.10'], metrics: nodeProxy.metrics.dns })
 * // in the pod: dig api.shop.svc.cluster.local → the service's VIP, answered by the proxy
 * await dns.close()
 * ```
 *
 * @throws `ERR_AMBIENT_INVALID_ARGUMENT` for a bad option,
 * `ERR_AMBIENT_DNS_NO_UPSTREAM` when there is no resolver to forward to,
 * `ERR_AMBIENT_REDIRECT_SOCKET` when a listener cannot be opened (another
 * program holds the port).
 */
export async function createDnsProxy(options: DnsProxyOptions): Promise<DnsProxy> {
  const proxy = new DnsProxyImpl(options)
  try {
    await proxy.start()
  } catch (err) {
    await proxy.close()
    throw err
  }
  return proxy
}

function positiveInteger(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) throw invalidArgument(name, value, 'an integer >= 1')
  return value
}

const DOMAIN = /^([a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}$/

function domain(name: string, value: unknown): string {
  const normalized = typeof value === 'string' ? normalizeName(value) : undefined
  if (normalized === undefined || !DOMAIN.test(normalized)) throw invalidArgument(name, value, 'a DNS domain like "cluster.local"')
  return normalized
}

/** Logs failures at `warn`, at most `burst` lines per window, then how many were left out. */
class FailureLog {
  #windowStart = 0
  #logged = 0
  #suppressed = 0

  constructor(
    readonly log: Logger,
    readonly burst = 5,
    readonly windowMs = 10_000,
  ) {}

  warn(fields: Record<string, unknown>, message: string): void {
    const now = Date.now()
    if (now - this.#windowStart >= this.windowMs) {
      if (this.#suppressed > 0) this.log.warn({ suppressed: this.#suppressed }, `${this.#suppressed} more DNS failures were not logged`)
      this.#windowStart = now
      this.#logged = 0
      this.#suppressed = 0
    }
    if (this.#logged < this.burst) {
      this.#logged += 1
      this.log.warn(fields, message)
    } else {
      this.#suppressed += 1
    }
  }
}

class DnsProxyImpl implements DnsProxy {
  readonly workload: Workload
  readonly addresses: SocketAddress[] = []
  upstreams: readonly SocketAddress[] = []
  readonly #options: DnsProxyOptions
  readonly #port: number
  readonly #mark: number
  readonly #ttl: number
  readonly #timeout: number
  readonly #maxPending: number
  readonly #maxTcp: number
  readonly #tcpIdle: number
  readonly #context: { namespace: string; clusterDomain: string; searchDomains: string[] }
  readonly #source: Pick<DnsRequestLabels, 'source_workload' | 'source_workload_namespace'>
  readonly #log: Logger
  readonly #failures: FailureLog
  readonly #udp: DgramSocket[] = []
  readonly #acceptors: SocketAcceptor[] = []
  readonly #connections = new Set<Socket>()
  readonly #stop = new AbortController()
  #forwarder: Forwarder | undefined
  #pending = 0
  #closing: Promise<void> | undefined

  constructor(options: DnsProxyOptions) {
    if (options === null || typeof options !== 'object') throw invalidArgument('createDnsProxy options', options, 'an object')
    if (typeof options.registry?.servicesByHostname !== 'function') throw invalidArgument('registry', options.registry, 'a WorkloadRegistry')
    this.#options = options
    this.workload = options.workload
    this.#port = options.port ?? DNS_PORT
    if (!Number.isInteger(this.#port) || this.#port < 1 || this.#port > 65535) throw invalidArgument('port', options.port, 'a port 1-65535')
    this.#mark = options.mark ?? PROXY_MARK
    if (!Number.isInteger(this.#mark) || this.#mark < 0 || this.#mark > 0xffffffff) throw invalidArgument('mark', options.mark, 'an integer 0-0xffffffff')
    this.#ttl = options.ttl ?? 30
    if (!Number.isInteger(this.#ttl) || this.#ttl < 0 || this.#ttl > 0x7fffffff) throw invalidArgument('ttl', options.ttl, 'seconds, an integer 0-2147483647')
    this.#timeout = positiveInteger('timeout', options.timeout, 4000)
    this.#maxPending = positiveInteger('maxPendingQueries', options.maxPendingQueries, 256)
    this.#maxTcp = positiveInteger('maxTcpConnections', options.maxTcpConnections, 64)
    this.#tcpIdle = positiveInteger('tcpIdleTimeout', options.tcpIdleTimeout, 10_000)
    if (options.ipv6 !== undefined && typeof options.ipv6 !== 'boolean') throw invalidArgument('ipv6', options.ipv6, 'a boolean')
    const clusterDomain = domain('clusterDomain', options.clusterDomain ?? 'cluster.local')
    if (options.searchDomains !== undefined && !Array.isArray(options.searchDomains)) throw invalidArgument('searchDomains', options.searchDomains, 'an array of DNS domains')
    const searchDomains =
      options.searchDomains?.map((d, i) => domain(`searchDomains[${i}]`, d)) ?? kubernetesSearchDomains(options.workload.namespace, clusterDomain)
    this.#context = { namespace: options.workload.namespace, clusterDomain, searchDomains }
    this.#source = { source_workload: options.workload.name, source_workload_namespace: options.workload.namespace }
    this.#log = (options.logger ?? silentLogger).child({ component: 'dns', workload: `${options.workload.namespace}/${options.workload.name}` })
    this.#failures = new FailureLog(this.#log)
  }

  async start(): Promise<void> {
    this.upstreams = Object.freeze(resolveUpstreams(this.#options.upstreams, this.#options.resolvConf ?? '/etc/resolv.conf'))
    this.#forwarder = new Forwarder({ netns: this.#options.netns, upstreams: this.upstreams, mark: this.#mark, timeout: this.#timeout })
    await this.#listen('127.0.0.1')
    if (this.#options.ipv6 === false) return
    try {
      await this.#listen('::1')
    } catch (err) {
      // A namespace without IPv6 has no ::1; unless IPv6 was asked for, IPv4 is all there is to serve.
      const errno = isAmbientError(err) ? err.details.errnoName : undefined
      if (this.#options.ipv6 === true || (errno !== 'EADDRNOTAVAIL' && errno !== 'EAFNOSUPPORT')) throw err
      this.#log.debug({ err }, 'no IPv6 loopback in the namespace: DNS proxy on IPv4 only')
    }
  }

  async #listen(host: string): Promise<void> {
    const { netns } = this.#options
    // SO_REUSEPORT: a new agent process (an upgrade) serves next to this one until it closes.
    const udp = await bindUdp(netns, { host, port: this.#port, mark: this.#mark, reusePort: true })
    this.#udp.push(udp)
    udp.on('message', (message, from) => void this.#onDatagram(udp, message, from))
    udp.on('error', (err) => this.#failures.warn({ err, host }, 'DNS proxy UDP socket error'))
    const listening = netns.listenFd({ host, port: this.#port, mark: this.#mark, reusePort: true })
    this.#acceptors.push(
      netns.accept(
        listening,
        ({ fd }) => this.#onConnection(asSocket(fd, true)),
        (errno) => this.#failures.warn({ errno, host }, 'DNS proxy TCP accepting paused: out of descriptors or memory'),
      ),
    )
    this.addresses.push({ address: host, port: this.#port, family: host.includes(':') ? 6 : 4 })
  }

  stats(): { pendingQueries: number; tcpConnections: number } {
    return { pendingQueries: this.#pending, tcpConnections: this.#connections.size }
  }

  async #onDatagram(socket: DgramSocket, message: Buffer, from: RemoteInfo): Promise<void> {
    const response = await this.#respond(message, 'udp')
    if (response === undefined || this.#closing !== undefined) return
    socket.send(response, from.port, from.address, (err) => {
      if (err) this.#failures.warn({ err, client: `${from.address}:${from.port}` }, 'cannot send a DNS response')
    })
  }

  #onConnection(socket: Socket): void {
    if (this.#closing !== undefined || this.#connections.size >= this.#maxTcp) {
      this.#drop('tcp-connections')
      socket.destroy()
      return
    }
    this.#connections.add(socket)
    socket.setNoDelay(true)
    socket.setTimeout(this.#tcpIdle, () => socket.destroy())
    const reader = new TcpMessageReader()
    const queued: Buffer[] = []
    socket.on('error', (err) => this.#log.debug({ err }, 'DNS client TCP connection error'))
    socket.on('close', () => {
      this.#connections.delete(socket)
      queued.length = 0
    })
    let inFlight = 0
    let ended = false
    let blocked = false
    // Reads while fewer than TCP_QUERIES_IN_FLIGHT queries wait and the client takes our answers.
    const pump = (): void => {
      while (queued.length > 0 && inFlight < TCP_QUERIES_IN_FLIGHT) {
        inFlight += 1
        void this.#respond(queued.shift()!, 'tcp').then((response) => {
          inFlight -= 1
          if (response !== undefined && !socket.destroyed && !writeTcpMessage(socket, response) && !blocked) {
            blocked = true
            socket.once('drain', () => {
              blocked = false
              pump()
            })
          }
          pump()
        })
      }
      if (ended && queued.length === 0 && inFlight === 0) socket.end()
      else if (blocked || queued.length + inFlight >= TCP_QUERIES_IN_FLIGHT) socket.pause()
      else socket.resume()
    }
    socket.on('data', (chunk: Buffer) => {
      queued.push(...reader.push(chunk))
      pump()
    })
    // The client may half-close after its last query: it still gets the answers.
    socket.on('end', () => {
      ended = true
      pump()
    })
  }

  #drop(reason: DnsDropReason): void {
    this.#options.metrics?.dropped(reason, this.#source)
  }

  /** The response to one raw message, or `undefined` when it gets none. Never throws. */
  async #respond(message: Buffer, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> {
    if (message.length < HEADER_BYTES || isResponse(message) === true) {
      this.#drop('malformed')
      return undefined
    }
    if (message.length > MAX_QUERY_BYTES) {
      this.#drop('oversized')
      this.#failures.warn({ bytes: message.length, transport }, `DNS query larger than ${MAX_QUERY_BYTES} bytes refused`)
      return headerOnlyResponse(message, Rcode.FormErr)
    }
    let query: Packet
    try {
      query = dnsPacket.decode(message)
    } catch (err) {
      this.#drop('undecodable')
      this.#failures.warn({ err, transport }, 'undecodable DNS query')
      return headerOnlyResponse(message, Rcode.FormErr)
    }
    const question = query.questions?.length === 1 ? query.questions[0] : undefined
    const labels: DnsRequestLabels = { request_query_type: queryTypeLabel(question?.type), request_protocol: transport, ...this.#source }
    this.#options.metrics?.request(labels)
    if (!isStandardQuery(query)) return buildResponse(query, { rcode: Rcode.NotImp })
    if (question === undefined) return buildResponse(query, { rcode: Rcode.FormErr })
    if (unsupportedEdnsVersion(query)) return badVersionResponse(query)
    const limit = transport === 'udp' ? udpLimit(query) : undefined
    const match = this.#meshName(message, question)
    if (match !== undefined) return buildResponse(query, { rcode: Rcode.NoError, answers: this.#records(question, match), authoritative: true }, limit)
    return this.#forward(message, query, transport, labels, limit)
  }

  #meshName(message: Buffer, question: Question): MeshNameMatch | undefined {
    if ((question.type !== 'A' && question.type !== 'AAAA') || (question.class ?? 'IN') !== 'IN') return undefined
    if (!questionRoundTrips(message, question)) return undefined
    return findMeshService(this.#options.registry, question.name, this.#context)
  }

  /** The answer for a mesh name: a CNAME when a search domain was taken off, then the VIPs of the asked family, in random order. A service without one has no records (NODATA): the name exists. */
  #records(question: Question, match: MeshNameMatch): Answer[] {
    const v6 = question.type === 'AAAA'
    const vips = match.service.vips.filter((vip) => vip.includes(':') === v6)
    for (let i = vips.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1))
      ;[vips[i], vips[j]] = [vips[j]!, vips[i]!]
    }
    const answers: Answer[] = []
    let owner = question.name
    if (match.canonicalName !== undefined) {
      answers.push({ type: 'CNAME', name: question.name, ttl: this.#ttl, class: 'IN', data: match.canonicalName })
      owner = match.canonicalName
    }
    for (const vip of vips) answers.push({ type: v6 ? 'AAAA' : 'A', name: owner, ttl: this.#ttl, class: 'IN', data: vip })
    return answers
  }

  async #forward(message: Buffer, query: Packet, transport: 'udp' | 'tcp', labels: DnsRequestLabels, limit: number | undefined): Promise<Buffer> {
    if (this.#pending >= this.#maxPending) {
      this.#drop('overload')
      this.#failures.warn({ pending: this.#pending }, `more than ${this.#maxPending} DNS queries forwarded at once: answering SERVFAIL`)
      return buildResponse(query, { rcode: Rcode.ServFail })
    }
    this.#pending += 1
    const started = process.hrtime.bigint()
    const seconds = (): number => Number(process.hrtime.bigint() - started) / 1e9
    try {
      const { response } = await this.#forwarder!.forward(message, transport, this.#stop.signal)
      this.#options.metrics?.forwarded(labels, seconds(), false)
      // A TCP fallback can bring more than the client's UDP takes: it asks again over TCP.
      return limit !== undefined && response.length > limit ? truncatedResponse(query) : response
    } catch (err) {
      this.#options.metrics?.forwarded(labels, seconds(), true)
      if (!this.#stop.signal.aborted) this.#failures.warn({ err, name: query.questions?.[0]?.name, transport }, `DNS query not answered upstream: ${(err as Error).message}`)
      return buildResponse(query, { rcode: Rcode.ServFail })
    } finally {
      this.#pending -= 1
    }
  }

  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    this.#stop.abort()
    for (const socket of this.#udp) socket.close()
    for (const socket of this.#connections) socket.destroy()
    for (const acceptor of this.#acceptors) acceptor.close()
  }
}
