import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { silentLogger, type Logger } from '@ambientkit/core'
import { accessLogFailed, ztunnelAccessLogFields, type AccessLogEntry, type AccessLogFormat } from './access-log'
import type { ConnectionLabels, ProxyMetrics } from './metrics'
import {
  HANDSHAKE_FAILURE_CHANNEL,
  type HandshakeFailureMessage,
  CONNECTION_CLOSE_CHANNEL,
  CONNECTION_OPEN_CHANNEL,
  type ConnectionCloseMessage,
  type ConnectionOpenMessage,
  type ProxyConnection,
} from './workload/connections'

/** Options of {@link observeConnections}. */
export interface ConnectionObserverOptions {
  /** The connections to observe: those whose `telemetry` is this object (what the workload proxies were given). */
  readonly telemetry: object
  /** Counted at each open and close, with labels fixed at the open. Default: none. */
  readonly metrics?: ProxyMetrics
  /**
   * Called with each connection's access-log entry when it ends. Default:
   * one `info` line on `logger`. A hook that throws is caught and counted,
   * and reported at most once a minute: a full disk under the log never
   * stops the proxy.
   */
  readonly accessLog?: (entry: AccessLogEntry) => void
  /** How the default access log (no `accessLog` hook) writes: see {@link AccessLogFormat}. Default `'ambientkit'`. */
  readonly accessLogFormat?: AccessLogFormat
  /** Default: silent. */
  readonly logger?: Logger
}

/** A running {@link observeConnections}. */
export interface ConnectionObserver {
  /** Access-log entries that could not be written (the hook threw). */
  readonly accessLogFailures: number
  /** Inbound connections that failed before carrying a tunnel (TLS, ALPN, identity). */
  readonly handshakeFailures: number
  /** Stops observing. Idempotent. */
  close(): void
}

/** How often a failing access log is reported, at most. */
const FAILURE_REPORT_INTERVAL_MS = 60_000

/**
 * Subscribes metrics and the access log to the connections of one
 * `telemetry` scope, on the `diagnostics_channel`s every connection record
 * publishes on ({@link CONNECTION_OPEN_CHANNEL}, {@link CONNECTION_CLOSE_CHANNEL}),
 * and counts the inbound handshakes that failed
 * ({@link HANDSHAKE_FAILURE_CHANNEL}): each in the metrics, and in the log
 * at most one line a minute with the count since the last, so a flood of
 * bad handshakes cannot fill the log disk.
 * The node proxy does this for all its workloads; other observers
 * (tracing, auditing) subscribe to the same channels.
 */
export function observeConnections(options: ConnectionObserverOptions): ConnectionObserver {
  const { telemetry, metrics } = options
  const logger = options.logger ?? silentLogger
  const accessLog = options.accessLog ?? defaultAccessLog(logger, options.accessLogFormat ?? 'ambientkit')
  const labels = new WeakMap<ProxyConnection, ConnectionLabels>()
  const labelSets = createLabelSets()
  let failures = 0
  let lastReport = Number.NEGATIVE_INFINITY
  const onOpen = (message: unknown): void => {
    const { connection } = message as ConnectionOpenMessage
    if (connection.telemetry !== telemetry || metrics === undefined) return
    const fixed = labelSets.of(connection)
    labels.set(connection, fixed)
    metrics.connectionOpened(fixed)
  }
  const onClose = (message: unknown): void => {
    const { connection, entry } = message as ConnectionCloseMessage
    if (connection.telemetry !== telemetry) return
    const flag = responseFlag(entry.outcome, connection.established)
    let fixed = labels.get(connection)
    if (fixed === undefined && flag !== '-' && metrics !== undefined) {
      // Denied or not connected: ztunnel counts it opened and closed, the close flagged.
      fixed = labelSets.of(connection)
      metrics.connectionOpened(fixed)
    }
    if (fixed !== undefined) metrics?.connectionClosed(labelSets.flagged(fixed, flag), { sent: entry.bytesSent, received: entry.bytesReceived })
    // Counted where authorization denied it: at the destination (an outbound 401 is the destination's denial).
    if (entry.outcome === 'denied' && entry.listener !== 'outbound') {
      metrics?.authorizationDenied({
        destination_workload: connection.workload.name,
        destination_workload_namespace: connection.workload.namespace,
        source_principal: entry.source.identity ?? 'unknown',
        policy: entry.policy ?? entry.reason ?? 'unknown',
        listener: entry.listener,
      })
    }
    try {
      accessLog(entry)
    } catch (err) {
      failures++
      metrics?.writeFailed?.({ file: 'access_log' })
      const now = performance.now()
      if (now - lastReport >= FAILURE_REPORT_INTERVAL_MS) {
        lastReport = now
        logger.error({ err, failures }, 'access log write failed; counting further failures and reporting them at most once a minute')
      }
    }
  }
  let handshakes = 0
  let unreported = 0
  let lastHandshakeReport = Number.NEGATIVE_INFINITY
  const onHandshakeFailure = (message: unknown): void => {
    const { telemetry: scope, workload, failure } = message as HandshakeFailureMessage
    if (scope !== telemetry) return
    handshakes++
    unreported++
    metrics?.handshakeFailed({ destination_workload: workload.name, reason: failure.reason })
    const now = performance.now()
    if (now - lastHandshakeReport < FAILURE_REPORT_INTERVAL_MS) return
    lastHandshakeReport = now
    logger.warn({ err: failure.error, reason: failure.reason, peer: failure.peerAddress, workload: `${workload.namespace}/${workload.name}`, failures: unreported }, 'inbound HBONE handshakes failed (this one shown; the count is since the last line, at most one a minute)')
    unreported = 0
  }
  subscribe(CONNECTION_OPEN_CHANNEL, onOpen)
  subscribe(CONNECTION_CLOSE_CHANNEL, onClose)
  subscribe(HANDSHAKE_FAILURE_CHANNEL, onHandshakeFailure)
  let open = true
  return {
    get accessLogFailures() {
      return failures
    },
    get handshakeFailures() {
      return handshakes
    },
    close() {
      if (!open) return
      open = false
      unsubscribe(CONNECTION_OPEN_CHANNEL, onOpen)
      unsubscribe(CONNECTION_CLOSE_CHANNEL, onClose)
      unsubscribe(HANDSHAKE_FAILURE_CHANNEL, onHandshakeFailure)
    },
  }
}

/** The access log on `logger`, in `format`. */
function defaultAccessLog(logger: Logger, format: AccessLogFormat): (entry: AccessLogEntry) => void {
  if (format === 'ambientkit') return (entry) => logger.info({ access: entry }, 'connection')
  return (entry) => {
    if (accessLogFailed(entry)) logger.error(ztunnelAccessLogFields(entry), 'connection complete')
    else logger.info(ztunnelAccessLogFields(entry), 'connection complete')
  }
}

/** ztunnel's `response_flags` for how a connection ended: `DENY` when policy refused it, `CONNECT` when it never connected. */
function responseFlag(outcome: AccessLogEntry['outcome'], established: boolean): ConnectionLabels['response_flags'] {
  if (outcome === 'denied') return 'DENY'
  return outcome === 'failed' && !established ? 'CONNECT' : '-'
}

/** Label sets kept at most per observer; past it the cache starts again (a mesh's peer pairs rarely come near). */
const MAX_LABEL_SETS = 4096

/**
 * The label sets of the connections one observer sees, shared by every
 * connection between the same peers: built once, not per connection, and
 * the same object each time, which {@link ProxyMetrics} implementations may
 * key their counts by.
 */
function createLabelSets(): {
  of(connection: ProxyConnection): ConnectionLabels
  flagged(labels: ConnectionLabels, flag: ConnectionLabels['response_flags']): ConnectionLabels
} {
  const sets = new Map<string, ConnectionLabels>()
  const flaggedSets = new WeakMap<ConnectionLabels, Map<string, ConnectionLabels>>()
  return {
    of(connection) {
      const key = labelKey(connection)
      let labels = sets.get(key)
      if (labels === undefined) {
        if (sets.size >= MAX_LABEL_SETS) sets.clear()
        labels = Object.freeze(connectionLabels(connection))
        sets.set(key, labels)
      }
      return labels
    },
    flagged(labels, flag) {
      if (flag === labels.response_flags) return labels
      let byFlag = flaggedSets.get(labels)
      if (byFlag === undefined) flaggedSets.set(labels, (byFlag = new Map()))
      let flagged = byFlag.get(flag)
      if (flagged === undefined) byFlag.set(flag, (flagged = Object.freeze({ ...labels, response_flags: flag })))
      return flagged
    },
  }
}

/**
 * Everything {@link connectionLabels} reads of a connection, as one string.
 * Each part is length-prefixed: a peer naming itself in its baggage cannot
 * make two different label sets share a key.
 */
function labelKey(connection: ProxyConnection): string {
  const { source: s, destination: d } = connection
  let key = `${connection.listener === 'outbound' ? 's' : 'd'}${connection.protocol === 'TCP' ? 't' : 'm'}`
  for (const part of [
    s.workload, s.canonicalService, s.canonicalRevision, s.namespace, s.identity, s.cluster,
    d.workload, d.canonicalService, d.canonicalRevision, d.namespace, d.identity, d.cluster,
    connection.service, connection.serviceNamespace,
  ]) {
    key += part === undefined ? '|' : `${part.length}:${part}`
  }
  return key
}

/**
 * Istio's `istio_tcp_*` labels of a connection (see {@link ConnectionLabels}),
 * from the peers its record fixed before it opened; `response_flags` is `-`.
 */
export function connectionLabels(connection: ProxyConnection): ConnectionLabels {
  const { source, destination, service } = connection
  const known = (value: string | undefined): string => value ?? 'unknown'
  const sourceService = known(source.canonicalService ?? source.workload)
  const sourceRevision = known(source.canonicalRevision)
  const destinationService = known(destination.canonicalService ?? destination.workload)
  const destinationRevision = known(destination.canonicalRevision)
  return {
    reporter: connection.listener === 'outbound' ? 'source' : 'destination',
    source_workload: known(source.workload),
    source_canonical_service: sourceService,
    source_canonical_revision: sourceRevision,
    source_workload_namespace: known(source.namespace),
    source_principal: known(source.identity),
    source_app: sourceService,
    source_version: sourceRevision,
    source_cluster: known(source.cluster),
    destination_service: known(service),
    destination_service_namespace: known(connection.serviceNamespace),
    destination_service_name: service === undefined ? 'unknown' : serviceName(service, connection.serviceNamespace),
    destination_workload: known(destination.workload),
    destination_canonical_service: destinationService,
    destination_canonical_revision: destinationRevision,
    destination_workload_namespace: known(destination.namespace),
    destination_principal: known(destination.identity),
    destination_app: destinationService,
    destination_version: destinationRevision,
    destination_cluster: known(destination.cluster),
    request_protocol: 'tcp',
    response_flags: '-',
    connection_security_policy: connection.protocol === 'TCP' ? 'unknown' : 'mutual_tls',
  }
}

/** A service's name: `name` of a Kubernetes host name `name.<namespace>.svc...`, else the whole host name. */
function serviceName(hostname: string, namespace: string | undefined): string {
  const dot = hostname.indexOf('.')
  return dot > 0 && namespace !== undefined && hostname.startsWith(`.${namespace}.svc.`, dot) ? hostname.slice(0, dot) : hostname
}
