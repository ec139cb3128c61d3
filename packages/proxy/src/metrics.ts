import { Counter, Gauge, Registry } from 'prom-client'

/**
 * The labels of a connection, in the spirit of Istio's `istio_tcp_*`
 * metrics, so dashboards built for Istio read ours with few changes.
 */
export interface ConnectionLabels {
  /** `source` for outbound connections, `destination` for inbound ones. */
  reporter: 'source' | 'destination'
  source_workload: string
  source_workload_namespace: string
  source_principal: string
  destination_workload: string
  destination_workload_namespace: string
  destination_principal: string
  /** `mutual_tls` (HBONE) or `none` (plaintext or passthrough). */
  connection_security_policy: 'mutual_tls' | 'none'
}

const CONNECTION_LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'connection_security_policy',
] as const

/** The node proxy's metrics; `registry` serves Prometheus text on `/metrics`. */
export interface ProxyMetrics {
  readonly registry: Registry
  connectionOpened(labels: ConnectionLabels): void
  connectionClosed(labels: ConnectionLabels, bytes: { sent: number; received: number }): void
  authorizationDenied(labels: { destination_workload: string; destination_workload_namespace: string; source_principal: string; policy: string; listener: string }): void
  handshakeFailed(labels: { destination_workload: string; reason: string }): void
  setWorkloads(count: number): void
}

/** Creates a {@link ProxyMetrics} with its own prom-client registry (never the global one). */
export function createProxyMetrics(): ProxyMetrics {
  const registry = new Registry()
  const opened = new Counter({ name: 'istio_tcp_connections_opened_total', help: 'TCP connections opened', labelNames: CONNECTION_LABELS, registers: [registry] })
  const closed = new Counter({ name: 'istio_tcp_connections_closed_total', help: 'TCP connections closed', labelNames: CONNECTION_LABELS, registers: [registry] })
  const sent = new Counter({ name: 'istio_tcp_sent_bytes_total', help: 'Bytes sent towards the destination', labelNames: CONNECTION_LABELS, registers: [registry] })
  const received = new Counter({ name: 'istio_tcp_received_bytes_total', help: 'Bytes received from the destination', labelNames: CONNECTION_LABELS, registers: [registry] })
  const denied = new Counter({
    name: 'ambientkit_authorization_denials_total',
    help: 'Connections denied by authorization policy',
    labelNames: ['destination_workload', 'destination_workload_namespace', 'source_principal', 'policy', 'listener'],
    registers: [registry],
  })
  const handshakes = new Counter({
    name: 'ambientkit_handshake_failures_total',
    help: 'Inbound HBONE connections that failed before carrying a tunnel (TLS, ALPN, identity)',
    labelNames: ['destination_workload', 'reason'],
    registers: [registry],
  })
  const workloads = new Gauge({ name: 'ambientkit_workloads', help: 'Workloads enrolled in this node proxy', registers: [registry] })
  return {
    registry,
    connectionOpened: (labels) => opened.inc(labels),
    connectionClosed(labels, bytes) {
      closed.inc(labels)
      if (bytes.sent > 0) sent.inc(labels, bytes.sent)
      if (bytes.received > 0) received.inc(labels, bytes.received)
    },
    authorizationDenied: (labels) => denied.inc(labels),
    handshakeFailed: (labels) => handshakes.inc(labels),
    setWorkloads: (count) => workloads.set(count),
  }
}
