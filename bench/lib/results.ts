import type { MachineInfo } from './proc'
import type { Summary } from './stats'

/** The data paths measured side by side: two baselines, a reference (HAProxy, plain TCP: what any two proxies add) and the mesh on one and on two nodes. */
export type ScenarioKey = 'direct' | 'stunnel' | 'haproxy' | 'meshSameNode' | 'meshCrossNode'

export const SCENARIOS: ReadonlyArray<{ key: ScenarioKey; label: string }> = [
  { key: 'direct', label: 'direct TCP' },
  { key: 'stunnel', label: 'stunnel mTLS' },
  { key: 'haproxy', label: 'HAProxy TCP, no TLS' },
  { key: 'meshSameNode', label: 'mesh, same node' },
  { key: 'meshCrossNode', label: 'mesh, cross node' },
]

export const MESH_SCENARIOS: readonly ScenarioKey[] = ['meshSameNode', 'meshCrossNode']

/** Figures of one scenario. `null` where a figure does not apply (no proxy on the direct path). */
export interface ScenarioResult {
  label: string
  /** Gbit/s received by the iperf3 server. */
  throughput1Gbps: Summary
  throughput8Gbps: Summary
  /** Round-trip time of a 64-byte request/response, µs; each a median over runs of that run's percentile. */
  latencyUs: { p50: Summary; p90: Summary; p99: Summary }
  /** Connect, one 64-byte exchange, close. */
  connectionsPerSecond: Summary
  /** Proxy CPU seconds per GB moved (single-stream runs). Client/server are null when one process is both. */
  cpuSecondsPerGB: { client: Summary | null; server: Summary | null; total: Summary } | null
  /** Proxy CPU use during the single-stream runs, in cores (1.0 = one core busy). */
  proxyCores: Summary | null
  /**
   * Share of the single-stream runs' wall time that the busiest proxy's main
   * thread spent runnable but waiting for a CPU (0..1): high values mean the
   * machine, not the proxy, set the pace.
   */
  proxyRunQueueWait: Summary | null
  /** Proxy CPU milliseconds per new connection (both sides), from the connection-rate runs. */
  cpuMsPerConnection: Summary | null
  /** Proxy CPU microseconds per 64-byte round trip (both sides), from the latency runs (10 ms clock ticks: rough). */
  cpuUsPerRoundTrip: Summary | null
  /** Resident memory of the proxy processes of this path, summed, KiB. */
  rssKiB: { idle: Summary; withIdleConnections: Summary; underLoad: Summary } | null
  /** RSS growth per idle proxied connection, KiB, both proxy sides together. */
  kibPerIdleConnection: Summary | null
}

/** A target the issue set, judged on this run. */
export interface TargetResult {
  target: string
  scenario: string
  value: string
  limit: string
  met: boolean
  /** When missed: what limits the figure, with this run's evidence. */
  why?: string
}

/** Another bench file's output, included as it printed it. */
export interface ExtraResult {
  file: string
  ok: boolean
  text?: string
  json?: unknown
  error?: string
}

/** Everything one run measured (`--json`). */
export interface BenchResult {
  version: 1
  startedAt: string
  durationSeconds: number
  quick: boolean
  machine: MachineInfo
  settings: Record<string, number | string | boolean>
  scenarios: Record<ScenarioKey, ScenarioResult>
  /** mesh figure ÷ baseline figure, per mesh scenario and baseline. */
  ratios: Record<string, Record<string, { vsDirect: number | null; vsStunnel: number | null }>>
  capture: Record<'nftables' | 'iptables', { applyMs: Summary; removeMs: Summary } | { error: string }>
  /**
   * Access-log entries per node proxy and protocol over the latency,
   * connection-rate and throughput runs: `local` entries are connections
   * the same-node fast path (`--same-node-fast-path`) handed over.
   */
  connectionsByProtocol: Record<string, Record<string, number>>
  /** Sequential mutual-TLS handshakes with SVIDs, one process both sides, per second. */
  handshakesPerSecond: Summary
  targets: TargetResult[]
  extras: ExtraResult[]
}
