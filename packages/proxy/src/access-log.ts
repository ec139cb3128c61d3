import { formatSocketAddress, HBONE_PORT } from '@ambientkit/core'

/** Which listener a connection arrived on. */
export type ProxyListener = 'outbound' | 'inbound-hbone' | 'inbound-plaintext'

/** How a proxied connection ended. */
export type ConnectionOutcome =
  /** Both sides closed cleanly. */
  | 'closed'
  /** One side was reset or failed after the connection was established. */
  | 'reset'
  /** Refused by authorization policy. */
  | 'denied'
  /** Refused before connecting upstream (loop, not in the mesh with passthrough off, unknown destination). */
  | 'refused'
  /** The upstream or tunnel could not be established. */
  | 'failed'
  /** Closed by the proxy: a policy change now denies it, the workload was removed, or a drain ran out of time. */
  | 'terminated'

/** One end of a logged connection. */
export interface AccessLogPeer {
  readonly address: string
  readonly port?: number
  readonly workload?: string
  readonly namespace?: string
  readonly identity?: string
  /**
   * Istio's canonical service of the workload there: its
   * `service.istio.io/canonical-name` label, else `app.kubernetes.io/name`,
   * else `app`, else the workload's name (as Istio derives it).
   */
  readonly canonicalService?: string
  /** Its canonical revision: `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`, else `version`, else `latest`. */
  readonly canonicalRevision?: string
  /** The cluster it runs in, when a peer said so (the `k8s.cluster.name` of its `baggage`). */
  readonly cluster?: string
}

/** One line of the access log: a connection, once it has ended. */
export interface AccessLogEntry {
  readonly listener: ProxyListener
  /**
   * `HBONE` when the hop between the pods is an mTLS tunnel, `TCP` when
   * plaintext, `local` when both are workloads of this node proxy and the
   * connection was handed over in-process (the same-node fast path: nothing
   * on the wire between the pods; authorized like HBONE, and logged by both ends).
   */
  readonly protocol: 'HBONE' | 'TCP' | 'local'
  readonly source: AccessLogPeer
  readonly destination: AccessLogPeer
  /** The service the destination was chosen from, if the app connected to a VIP (its host name). */
  readonly service?: string
  /** That service's namespace. */
  readonly serviceNamespace?: string
  /** Bytes from the source towards the destination. */
  readonly bytesSent: number
  /** Bytes from the destination back to the source. */
  readonly bytesReceived: number
  readonly durationMs: number
  readonly outcome: ConnectionOutcome
  /** Why, in a few words (`denied by shop/deny-admin`, `upstream connect failed: ECONNREFUSED`, ...). */
  readonly reason?: string
  /** The authorization policy that decided, when one did. */
  readonly policy?: string
}

/**
 * How the default access log writes an entry: `ambientkit` (the
 * {@link AccessLogEntry} under `access`, message `connection`) or `ztunnel`
 * (ztunnel's field names, see {@link ztunnelAccessLogFields}, message
 * `connection complete`, at `error` level when the connection failed), so
 * log pipelines built for ztunnel read ours.
 */
export type AccessLogFormat = 'ambientkit' | 'ztunnel'

/** Outcomes ztunnel logs as errors: the connection did not carry what it was opened for. */
const FAILED_OUTCOMES: ReadonlySet<ConnectionOutcome> = new Set(['denied', 'refused', 'failed', 'terminated'])

/** True when ztunnel would log this connection's end as an error. */
export function accessLogFailed(entry: AccessLogEntry): boolean {
  return FAILED_OUTCOMES.has(entry.outcome)
}

/**
 * An entry under ztunnel's access-log field names (its `connection
 * complete` line): `src.addr`, `src.workload`, `src.namespace`,
 * `src.identity`, `src.cluster`, `dst.addr`, `dst.hbone_addr`,
 * `dst.service`, `dst.workload`, `dst.namespace`, `dst.identity`,
 * `dst.cluster`, `direction` (`outbound` | `inbound`), `bytes_sent`,
 * `bytes_recv`, `duration` (`<n>ms`) and, when it failed, `error`.
 * As in ztunnel, identities appear only over mutual TLS, `dst.addr` of a
 * tunnel is its HBONE port (15008) and `dst.hbone_addr` the target inside
 * it, and `bytes_sent` is what the reporting side's workload sent (the
 * request's bytes outbound, the response's inbound). Absent values are
 * left out.
 *
 * @example
 * ```ts
 * import { createNodeProxy, ztunnelAccessLogFields, type NodeProxyOptions } from '@ambientkit/proxy'
 *
 * declare const options: NodeProxyOptions
 * const proxy = createNodeProxy({ ...options, accessLog: (entry) => console.log(JSON.stringify(ztunnelAccessLogFields(entry))) })
 * ```
 */
export function ztunnelAccessLogFields(entry: AccessLogEntry): Record<string, string | number> {
  const { source, destination } = entry
  const outbound = entry.listener === 'outbound'
  const mtls = entry.protocol !== 'TCP'
  const address = (peer: AccessLogPeer, port = peer.port): string => (port === undefined ? peer.address : formatSocketAddress({ address: peer.address, port }))
  const fields: Record<string, string | number | undefined> = {
    'src.addr': address(source),
    'src.workload': source.workload ?? source.canonicalService,
    'src.namespace': source.namespace,
    'src.identity': mtls ? source.identity : undefined,
    'src.cluster': source.cluster,
    'dst.addr': mtls ? address(destination, HBONE_PORT) : address(destination),
    'dst.hbone_addr': mtls ? address(destination) : undefined,
    'dst.service': entry.service,
    'dst.workload': destination.workload ?? destination.canonicalService,
    'dst.namespace': destination.namespace,
    'dst.identity': mtls ? destination.identity : undefined,
    'dst.cluster': destination.cluster,
    direction: outbound ? 'outbound' : 'inbound',
    bytes_sent: outbound ? entry.bytesSent : entry.bytesReceived,
    bytes_recv: outbound ? entry.bytesReceived : entry.bytesSent,
    duration: `${Math.round(entry.durationMs)}ms`,
    error: accessLogFailed(entry) ? (entry.reason ?? entry.outcome) : undefined,
  }
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined)) as Record<string, string | number>
}
