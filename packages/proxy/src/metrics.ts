import { createRequire } from 'node:module'
import type * as PromClientModule from 'prom-client'
import { AmbientError } from '@ambientkit/core'
import { registerDnsMetrics, type DnsMetrics } from './dns/metrics'
import { HboneErrorCode } from './hbone/errors'

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
  /** `mutual_tls` (HBONE, or in-process between two workloads of the mesh) or `none` (plaintext or passthrough). */
  connection_security_policy: 'mutual_tls' | 'none'
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
  connectionOpened(labels: ConnectionLabels): void
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

type PromClient = typeof PromClientModule

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
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]) => new prom.Counter<L>({ name, help, labelNames, registers: [registry] })
  const opened = counter('istio_tcp_connections_opened_total', 'TCP connections opened', CONNECTION_LABELS)
  const closed = counter('istio_tcp_connections_closed_total', 'TCP connections closed', CONNECTION_LABELS)
  const sent = counter('istio_tcp_sent_bytes_total', 'Bytes sent towards the destination', CONNECTION_LABELS)
  const received = counter('istio_tcp_received_bytes_total', 'Bytes received from the destination', CONNECTION_LABELS)
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
    connectionOpened: (labels) => opened.inc(labels),
    connectionClosed(labels, bytes) {
      closed.inc(labels)
      if (bytes.sent > 0) sent.inc(labels, bytes.sent)
      if (bytes.received > 0) received.inc(labels, bytes.received)
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
