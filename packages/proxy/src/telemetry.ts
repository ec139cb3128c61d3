import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { silentLogger, type Logger } from '@ambientkit/core'
import type { AccessLogEntry } from './access-log'
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
  const accessLog = options.accessLog ?? ((entry: AccessLogEntry) => logger.info({ access: entry }, 'connection'))
  const labels = new WeakMap<ProxyConnection, ConnectionLabels>()
  let failures = 0
  let lastReport = Number.NEGATIVE_INFINITY
  const onOpen = (message: unknown): void => {
    const { connection } = message as ConnectionOpenMessage
    if (connection.telemetry !== telemetry || metrics === undefined) return
    const fixed = connectionLabels(connection)
    labels.set(connection, fixed)
    metrics.connectionOpened(fixed)
  }
  const onClose = (message: unknown): void => {
    const { connection, entry } = message as ConnectionCloseMessage
    if (connection.telemetry !== telemetry) return
    const fixed = labels.get(connection)
    if (fixed !== undefined) metrics?.connectionClosed(fixed, { sent: entry.bytesSent, received: entry.bytesReceived })
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

/** Istio's `istio_tcp_*` labels of a connection, from the peers its record fixed before it opened. */
export function connectionLabels(connection: ProxyConnection): ConnectionLabels {
  const { source, destination } = connection
  return {
    reporter: connection.listener === 'outbound' ? 'source' : 'destination',
    source_workload: source.workload ?? 'unknown',
    source_workload_namespace: source.namespace ?? 'unknown',
    source_principal: source.identity ?? 'unknown',
    destination_workload: destination.workload ?? 'unknown',
    destination_workload_namespace: destination.namespace ?? 'unknown',
    destination_principal: destination.identity ?? 'unknown',
    connection_security_policy: connection.protocol === 'TCP' ? 'none' : 'mutual_tls',
  }
}
