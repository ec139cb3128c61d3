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
