import { createRequire } from 'node:module'
import type * as PromClientModule from 'prom-client'
import { AmbientError } from '@ambientkit/core'
import { registerDnsMetrics, type DnsMetrics } from './dns/metrics'
import { HboneErrorCode } from './hbone/errors'

/**
 * The labels of a connection on the `istio_tcp_*` metrics: exactly
 * ztunnel's set (its `CommonTrafficLabels`), so Istio's and Kiali's
 * dashboards read ours unchanged. What is not known is `unknown`, as in
 * ztunnel. `source_app`/`source_version` (and the destination's) repeat the
 * canonical service and revision, as ztunnel does.
 */
export interface ConnectionLabels {
  /** `source` for outbound connections, `destination` for inbound ones. */
  reporter: 'source' | 'destination'
  source_workload: string
  source_canonical_service: string
  source_canonical_revision: string
  source_workload_namespace: string
  source_principal: string
  source_app: string
  source_version: string
  source_cluster: string
  /** The service's host name, when the connection went to a service. */
  destination_service: string
  destination_service_namespace: string
  destination_service_name: string
  destination_workload: string
  destination_canonical_service: string
  destination_canonical_revision: string
  destination_workload_namespace: string
  destination_principal: string
  destination_app: string
  destination_version: string
  destination_cluster: string
  /** Always `tcp`: the proxy does not parse what it carries. */
  request_protocol: 'tcp'
  /**
   * `-` (none), `DENY` (refused by authorization policy) or `CONNECT` (the
   * upstream or the tunnel could not be connected): ztunnel's flags. An open
   * is always counted with `-`; its close carries the flag.
   */
  response_flags: '-' | 'DENY' | 'CONNECT'
  /** `mutual_tls` (HBONE, or in-process between two workloads of the mesh) or `unknown` (plaintext or passthrough), as ztunnel names them. */
  connection_security_policy: 'mutual_tls' | 'unknown'
}

/** The labels of a connection denied by authorization. */
export interface DenialLabels {
  destination_workload: string
  destination_workload_namespace: string
  source_principal: string
  /** The deciding policy (`namespace/name`), or the reason when none decided. */
  policy: string
  listener: string
}

/**
 * What the proxy counts. Bring your own (OpenTelemetry, StatsD...) by
 * implementing it, or take {@link createProxyMetrics}, which counts with
 * `prom-client` and serves Prometheus text.
 */
export interface ProxyMetrics {
  /**
   * A connection opened. The label sets {@link observeConnections} passes
   * are shared: connections with the same peers get the same object, never
   * changed after, so an implementation may key its counts by the object.
   */
  connectionOpened(labels: ConnectionLabels): void
  /**
   * A connection ended. `bytes.sent` went from the source towards the
   * destination, `bytes.received` back. Istio counts the latter as
   * `istio_tcp_sent_bytes_total` ("sent during response") and the former as
   * `istio_tcp_received_bytes_total`, whatever the reporter: what the source
   * sent is "received" even when the source reports it (istio/istio#32399),
   * and {@link createProxyMetrics} counts them so.
   */
  connectionClosed(labels: ConnectionLabels, bytes: { sent: number; received: number }): void
  authorizationDenied(labels: DenialLabels): void
  handshakeFailed(labels: { destination_workload: string; reason: string }): void
  setWorkloads(count: number): void
  /** The node agent found capture changed by another program and applied it again: in a pod, or the probe rewrite on the node. */
  captureDriftRepaired?(labels: { scope: 'pod' | 'node' }): void
  /** A write the disk refused (full, read-only): `file` is `access_log`, or `state` (the node agent's state file). Absent: not counted. */
  writeFailed?(labels: { file: string }): void
  /** Where the pods' DNS proxies count their requests, when this implementation counts them. */
  readonly dns?: DnsMetrics
  /** The metrics as Prometheus text, for the admin server's `/metrics`; absent when this implementation has none to serve. */
  exposition?(): Promise<{ contentType: string; body: string }>
}

/** ztunnel's label names on `istio_tcp_*`, in its order (src/proxy/metrics.rs). */
export const CONNECTION_LABEL_NAMES = [
  'reporter',
  'source_workload',
  'source_canonical_service',
  'source_canonical_revision',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'source_version',
  'source_cluster',
  'destination_service',
  'destination_service_namespace',
  'destination_service_name',
  'destination_workload',
  'destination_canonical_service',
  'destination_canonical_revision',
  'destination_workload_namespace',
  'destination_principal',
  'destination_app',
  'destination_version',
  'destination_cluster',
  'request_protocol',
  'response_flags',
  'connection_security_policy',
] as const satisfies ReadonlyArray<keyof ConnectionLabels>

type PromClient = typeof PromClientModule

/** Counts of one label set not yet handed to prom-client. */
interface PendingCounts {
  opened: number
  closed: number
  sent: number
  received: number
}

/** The label sets whose counts wait for the next read, at most: past it they are handed over at once. */
const PENDING_LABEL_SETS = 1024

let promClient: PromClient | Error | undefined

/** `prom-client`, an optional peer dependency: loaded on first use. */
function loadPromClient(): PromClient | Error {
  if (promClient === undefined) {
    try {
      promClient = createRequire(import.meta.url)('prom-client') as PromClient
    } catch (err) {
      promClient = err as Error
    }
  }
  return promClient
}

/** True when {@link createProxyMetrics} can be used (`prom-client` is installed). */
export function promClientAvailable(): boolean {
  return !(loadPromClient() instanceof Error)
}

/**
 * Creates {@link ProxyMetrics} counting in a `prom-client` registry of its
 * own (never the global one), served as Prometheus text by `exposition()`.
 * `prom-client` is an optional peer dependency of this package: throws
 * `ERR_AMBIENT_PROXY_METRICS_UNAVAILABLE` (saying to install it) when it is
 * not installed.
 */
export function createProxyMetrics(): ProxyMetrics {
  const prom = loadPromClient()
  if (prom instanceof Error) {
    throw new AmbientError(HboneErrorCode.MetricsUnavailable, `Prometheus metrics need the optional peer dependency prom-client: npm install prom-client (${prom.message})`, {
      cause: prom,
    })
  }
  const registry = new prom.Registry()
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[], collect?: () => void) =>
    new prom.Counter<L>({ name, help, labelNames, registers: [registry], ...(collect === undefined ? {} : { collect }) })
  // The istio_tcp_* counts are kept per label set and handed to prom-client when
  // it is read (a scrape): its inc() hashes and checks all 23 labels each time,
  // four times per connection end, which cost more than the rest of a
  // connection's bookkeeping. Label sets are keyed by object: observeConnections
  // shares one per set of peers; a caller passing a new object each time is
  // still counted right, with at most PENDING_LABEL_SETS kept between reads.
  const pending = new Map<ConnectionLabels, PendingCounts>()
  const flush = (): void => {
    for (const [labels, counts] of pending) {
      if (counts.opened > 0) opened.inc(labels, counts.opened)
      if (counts.closed > 0) closed.inc(labels, counts.closed)
      if (counts.sent > 0) sent.inc(labels, counts.sent)
      if (counts.received > 0) received.inc(labels, counts.received)
    }
    pending.clear()
  }
  const countsOf = (labels: ConnectionLabels): PendingCounts => {
    let counts = pending.get(labels)
    if (counts === undefined) {
      if (pending.size >= PENDING_LABEL_SETS) flush()
      counts = { opened: 0, closed: 0, sent: 0, received: 0 }
      pending.set(labels, counts)
    }
    return counts
  }
  const opened = counter('istio_tcp_connections_opened_total', 'TCP connections opened', CONNECTION_LABEL_NAMES, flush)
  const closed = counter('istio_tcp_connections_closed_total', 'TCP connections closed', CONNECTION_LABEL_NAMES, flush)
  const sent = counter('istio_tcp_sent_bytes_total', 'Bytes sent during response (from the destination back to the source)', CONNECTION_LABEL_NAMES, flush)
  const received = counter('istio_tcp_received_bytes_total', 'Bytes received during request (from the source towards the destination)', CONNECTION_LABEL_NAMES, flush)
  const denied = counter('ambientkit_authorization_denials_total', 'Connections denied by authorization policy', [
    'destination_workload',
    'destination_workload_namespace',
    'source_principal',
    'policy',
    'listener',
  ] as const)
  const handshakes = counter('ambientkit_handshake_failures_total', 'Inbound HBONE connections that failed before carrying a tunnel (TLS, ALPN, identity)', [
    'destination_workload',
    'reason',
  ] as const)
  const repairs = counter('ambientkit_capture_drift_repairs_total', 'Capture rules found changed by another program and applied again by the node agent', ['scope'] as const)
  const writes = counter('ambientkit_write_failures_total', 'Writes the disk refused (full, read-only), by file: access_log, state', ['file'] as const)
  const workloads = new prom.Gauge({ name: 'ambientkit_workloads', help: 'Workloads enrolled in this node proxy', registers: [registry] })
  return {
    connectionOpened(labels) {
      countsOf(labels).opened++
    },
    connectionClosed(labels, bytes) {
      const counts = countsOf(labels)
      counts.closed++
      // What the destination sent back is istio_tcp_sent_bytes_total (see ProxyMetrics.connectionClosed).
      counts.sent += bytes.received
      counts.received += bytes.sent
    },
    authorizationDenied: (labels) => denied.inc({ ...labels }),
    handshakeFailed: (labels) => handshakes.inc(labels),
    setWorkloads: (count) => workloads.set(count),
    captureDriftRepaired: (labels) => repairs.inc(labels),
    writeFailed: (labels) => writes.inc(labels),
    dns: registerDnsMetrics(prom, registry),
    exposition: async () => ({ contentType: registry.contentType, body: await registry.metrics() }),
  }
}
