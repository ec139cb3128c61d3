import type * as PromClientModule from 'prom-client'

/** The labels of a DNS request, after ztunnel's `istio_dns_*` metrics (source as our connection metrics name it). */
export interface DnsRequestLabels {
  /** `a`, `aaaa`, `srv`..., `other` for a type outside the common ones (so a client cannot grow the label set). */
  request_query_type: string
  request_protocol: 'udp' | 'tcp'
  source_workload: string
  source_workload_namespace: string
}

/** Why a message got no answer of its own, or an error instead of one. */
export type DnsDropReason =
  /** Shorter than a header, or a response sent to us: dropped. */
  | 'malformed'
  /** Larger than the proxy takes: FORMERR. */
  | 'oversized'
  /** Could not be decoded: FORMERR. */
  | 'undecodable'
  /** Too many queries forwarded at once: SERVFAIL. */
  | 'overload'
  /** A TCP connection over the limit: closed. */
  | 'tcp-connections'

/** The DNS proxies' metrics; one set per node, every pod's proxy adds to it. */
export interface DnsMetrics {
  /** Every request answered, locally or forwarded. */
  request(labels: DnsRequestLabels): void
  /** A request forwarded upstream, and how long the answer took (`failed`: none came; the client got SERVFAIL). */
  forwarded(labels: DnsRequestLabels, seconds: number, failed: boolean): void
  /** A message dropped or answered with an error before it was a request. */
  dropped(reason: DnsDropReason, labels: Pick<DnsRequestLabels, 'source_workload' | 'source_workload_namespace'>): void
}

const REQUEST_LABELS = ['request_query_type', 'request_protocol', 'source_workload', 'source_workload_namespace'] as const

/**
 * Registers the DNS metrics in a `prom-client` registry (the node proxy's,
 * so `/metrics` serves them): `istio_dns_requests_total`,
 * `istio_dns_upstream_requests_total`, `istio_dns_upstream_failures_total`
 * and `istio_dns_upstream_request_duration_seconds` as ztunnel names them,
 * and `ambientkit_dns_dropped_total{reason}`. `createProxyMetrics` calls it:
 * its `dns` member is the result.
 */
export function registerDnsMetrics(prom: typeof PromClientModule, registry: PromClientModule.Registry): DnsMetrics {
  const registers = [registry]
  const requests = new prom.Counter({ name: 'istio_dns_requests_total', help: 'DNS requests', labelNames: REQUEST_LABELS, registers })
  const upstream = new prom.Counter({ name: 'istio_dns_upstream_requests_total', help: 'DNS requests forwarded to the upstream resolver', labelNames: REQUEST_LABELS, registers })
  const failures = new prom.Counter({
    name: 'istio_dns_upstream_failures_total',
    help: 'DNS requests the upstream resolver did not answer (the client got SERVFAIL)',
    labelNames: REQUEST_LABELS,
    registers,
  })
  const duration = new prom.Histogram({
    name: 'istio_dns_upstream_request_duration_seconds',
    help: 'Time the upstream resolver took to answer',
    labelNames: REQUEST_LABELS,
    buckets: [0.001, 0.005, 0.01, 0.1, 1, 5],
    registers,
  })
  const dropped = new prom.Counter({
    name: 'ambientkit_dns_dropped_total',
    help: 'DNS messages dropped or refused before they were requests (malformed, oversized, over a limit)',
    labelNames: ['reason', 'source_workload', 'source_workload_namespace'],
    registers,
  })
  return {
    request: (labels) => requests.inc(labels),
    forwarded(labels, seconds, failed) {
      upstream.inc(labels)
      duration.observe(labels, seconds)
      if (failed) failures.inc(labels)
    },
    dropped: (reason, labels) => dropped.inc({ reason, ...labels }),
  }
}

const QUERY_TYPES = new Set(['A', 'AAAA', 'CNAME', 'SRV', 'PTR', 'TXT', 'MX', 'NS', 'SOA', 'CAA', 'HTTPS', 'SVCB', 'ANY', 'DS', 'DNSKEY', 'NAPTR'])

/** A query type as a metric label: lower case for the common ones, `other` for the rest. */
export function queryTypeLabel(type: string | undefined): string {
  return type !== undefined && QUERY_TYPES.has(type) ? type.toLowerCase() : 'other'
}
