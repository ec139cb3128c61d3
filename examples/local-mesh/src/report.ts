import { existsSync, readFileSync } from 'node:fs'
import type { Workload } from '@ambientkit/core'
import type { AccessLogEntry } from '@ambientkit/proxy'
import type { CaptureAnalysis } from './pcap'
import type { RequestResult } from './traffic'

/** One request the demo sent, and what the mesh made of it. */
export interface Flow {
  /** Which part of the run sent it. */
  readonly phase: 'matrix' | 'add-remove' | 'agent-down' | 'agent-restarted'
  readonly from: string
  /** The destination pod (`namespace/name`) or service host name. */
  readonly to: string
  readonly address: string
  readonly port: number
  readonly marker: string
  /** True when the bytes may cross the node link in the clear: a non-mesh end, by design. */
  readonly plaintextExpected: boolean
  /** Whether each end is in the mesh (a service counts as in the mesh). */
  readonly fromMesh: boolean
  readonly toMesh: boolean
  /** The client's view. */
  readonly result: 'reached' | 'denied' | 'failed'
  /** Tries it took (more than 1 only where the demo retries: after an agent restart). */
  readonly attempts: number
  /** The echo app that answered and the peer address it saw. */
  readonly answeredBy?: string
  readonly peerSeen?: string
  readonly error?: string
  /** From the node proxies' access logs. */
  readonly protocol?: 'HBONE' | 'TCP' | 'local'
  readonly sourceIdentity?: string
  readonly destinationIdentity?: string
  /** `allowed by <ns/name>`, `denied by <ns/name>`, `allowed: no policy applies`, ... */
  readonly decision?: string
  readonly policy?: string
  /** Which node proxies logged it: the client's (`source`), the server's (`destination`). */
  readonly seenBy: ReadonlyArray<'source' | 'destination'>
  /** Access-log outcome on the destination's node (or the source's, if the destination never saw it). */
  readonly outcome?: string
}

/** A request before the access logs are read. */
export interface SentRequest {
  readonly phase: Flow['phase']
  readonly from: Workload
  readonly to: string
  /** The workload that should answer (for a service: undefined until the logs say). */
  readonly target?: Workload
  readonly address: string
  readonly port: number
  readonly marker: string
  readonly plaintextExpected: boolean
  readonly sent: RequestResult
  /** How many times it was sent (the last try is reported). */
  readonly attempts: number
  /** When the request started and ended (ms since the epoch): access-log entries are matched within this window. */
  readonly startedAt: number
  readonly endedAt: number
}

/** Everything the demo prints (text) or emits (`--json`). */
export interface DemoReport {
  readonly mesh: {
    readonly trustDomain: string
    readonly nodes: ReadonlyArray<{ name: string; podCidr: string; admin: string }>
    readonly pods: ReadonlyArray<{ pod: string; node: string; ip: string; mesh: boolean; identity: string }>
    readonly services: ReadonlyArray<{ host: string; vip: string; endpoints: string[] }>
    readonly policies: readonly string[]
  }
  readonly flows: readonly Flow[]
  readonly addRemove?: {
    readonly pod: string
    readonly enrolledInMs: number
    readonly releasedInMs: number
    /** The client's requests to another pod meanwhile; `errors`: why the first few that failed did (empty when all reached). */
    readonly background: { from: string; to: string; sent: number; reached: number; errors: string[] }
  }
  readonly restart?: {
    readonly node: string
    readonly downFor: string
    readonly reconciled: { enrolled: number; removed: number; failed: number }
  }
  /** HTTP statuses a pod got from its node's admin server, at the node's address. */
  readonly adminFromPod?: { pod: string; node: string; ready: number; metrics: number; configDump: number }
  /** The identity plane seen from outside: what the CA service and the Workload API refused and gave. */
  readonly identity?: {
    /** A node's credential asking for the identity of a pod on another node. */
    readonly impersonation: { node: string; asked: string; refused: boolean; answer: string; auditReason?: string }
    /** A caller with no credential at all. */
    readonly unauthenticated: { refused: boolean; answer: string; auditReason?: string }
    /** Apps asking the Workload API of a node for their SVID, from inside pods. */
    readonly workloadApi: ReadonlyArray<{ pod: string; socketOf: string; expected?: string; got: Record<string, string> }>
  }
  /** The control plane killed with SIGKILL while traffic ran, then restarted. */
  readonly controlPlaneRestart?: {
    readonly downFor: string
    readonly agentsAlive: boolean
    readonly reconnectedInMs: number | undefined
    readonly background: { from: string; to: string; sent: number; reached: number; errors: string[] }
  }
  readonly capture: CaptureAnalysis & {
    readonly link: string
    readonly meshMarkers: number
    readonly meshMarkersSeen: readonly string[]
    readonly plaintextMarkers: number
    readonly plaintextMarkersSeen: number
  }
  readonly checks: ReadonlyArray<{ check: string; ok: boolean; detail: string }>
  readonly ok: boolean
}

/** Reads a node's access log (JSON lines). */
export function readAccessLog(file: string): LoggedEntry[] {
  if (!existsSync(file)) return []
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as LoggedEntry)
}

/** An access-log line as the node agents write it: the entry, its node and when it was written. */
export type LoggedEntry = AccessLogEntry & { node: string; time: string }

const name = (w: Pick<Workload, 'namespace' | 'name'>): string => `${w.namespace}/${w.name}`

/**
 * Joins the requests with the access logs: the source node's outbound entry
 * (matched by the client's port), then the destination node's inbound entry
 * (HBONE: by client address and destination, in order; plaintext: by port).
 */
export function correlate(
  sent: readonly SentRequest[],
  logs: readonly LoggedEntry[],
  workloads: readonly Workload[],
): Flow[] {
  const used = new Set<AccessLogEntry>()
  const byAddress = (ip: string): Workload | undefined => workloads.find((w) => w.addresses.includes(ip))
  return sent.map((s) => {
    const clientIp = s.from.addresses[0]!
    // An entry is written when its connection ends: within the request's
    // window (plus a little for the proxy to finish after the client).
    const inWindow = (e: LoggedEntry): boolean => {
      const t = Date.parse(e.time)
      return t >= s.startedAt - 5 && t <= s.endedAt + 3000
    }
    const take = (match: (e: LoggedEntry) => boolean): LoggedEntry | undefined => {
      const entry = logs.find((e) => !used.has(e) && inWindow(e) && match(e))
      if (entry !== undefined) used.add(entry)
      return entry
    }
    const outbound =
      s.sent.localPort === undefined ? undefined : take((e) => e.listener === 'outbound' && e.source.address === clientIp && e.source.port === s.sent.localPort)
    const destAddress = outbound?.destination.address ?? s.address
    const destPort = outbound?.destination.port ?? s.port
    // A mesh client's request reaches the destination's HBONE listener only
    // if its node proxy got that far (its outbound entry says so); a
    // non-mesh client's lands on the plaintext listener, same source port.
    const tunnelled = outbound?.protocol === 'HBONE' && (outbound.outcome === 'closed' || outbound.outcome === 'reset' || outbound.outcome === 'denied')
    const inbound =
      s.from.protocol === 'HBONE'
        ? tunnelled
          ? take((e) => e.listener === 'inbound-hbone' && e.source.address === clientIp && e.destination.address === destAddress && e.destination.port === destPort)
          : undefined
        : s.sent.localPort === undefined
          ? take((e) => e.listener === 'inbound-plaintext' && e.source.address === clientIp && e.destination.address === destAddress && e.destination.port === destPort)
          : take((e) => e.listener === 'inbound-plaintext' && e.source.address === clientIp && e.source.port === s.sent.localPort)
    const target = s.target ?? byAddress(destAddress)
    const result: Flow['result'] = s.sent.ok ? 'reached' : inbound?.outcome === 'denied' || outbound?.outcome === 'denied' ? 'denied' : 'failed'
    const protocol = inbound?.protocol ?? outbound?.protocol
    const sourceIdentity = inbound?.source.identity ?? (outbound?.protocol === 'HBONE' ? workloadId(s.from) : undefined)
    const destinationIdentity = inbound?.destination.identity ?? outbound?.destination.identity
    let decision: string | undefined
    const policy = inbound?.policy
    if (result === 'denied') {
      const why = inbound?.reason ?? outbound?.reason
      decision = policy !== undefined ? `denied by ${policy}` : why === undefined || why === 'no-allow-policy-matched' ? 'denied: no ALLOW policy matched' : `denied: ${why}`
    } else if (result === 'reached' && target !== undefined && target.protocol === 'HBONE') {
      // The destination's proxy logs the policy that allowed the connection, if one did.
      decision = policy !== undefined ? `allowed by ${policy}` : 'allowed: no ALLOW policy applies'
    } else if (result === 'reached') {
      decision = 'not in the mesh: plain TCP'
    }
    return {
      phase: s.phase,
      from: name(s.from),
      to: s.to,
      address: s.address,
      port: s.port,
      marker: s.marker,
      plaintextExpected: s.plaintextExpected,
      fromMesh: s.from.protocol === 'HBONE',
      toMesh: s.target === undefined ? target?.protocol !== 'TCP' : s.target.protocol === 'HBONE',
      result,
      attempts: s.attempts,
      seenBy: [...(outbound ? ['source' as const] : []), ...(inbound ? ['destination' as const] : [])],
      ...(s.sent.answer ? { answeredBy: s.sent.answer.app, peerSeen: s.sent.answer.peer } : {}),
      ...(s.sent.error ? { error: s.sent.error } : {}),
      ...(protocol ? { protocol } : {}),
      ...(sourceIdentity ? { sourceIdentity } : {}),
      ...(destinationIdentity ? { destinationIdentity } : {}),
      ...(decision ? { decision } : {}),
      ...(policy ? { policy } : {}),
      ...((inbound ?? outbound)?.outcome ? { outcome: (inbound ?? outbound)!.outcome } : {}),
    }
  })
}

function workloadId(w: Workload): string {
  return `spiffe://${w.trustDomain ?? 'cluster.local'}/ns/${w.namespace}/sa/${w.serviceAccount}`
}

const short = (id: string | undefined): string => (id === undefined ? '-' : id.replace(/^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\/(.+)$/, '$1/sa/$2'))
const mark = { reached: '✓', denied: '✗', failed: '!' } as const

function pad(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ').trimEnd())
}

/** The report as text, for people. */
export function formatReport(report: DemoReport): string {
  const out: string[] = []
  const { mesh } = report
  out.push(`ambientkit local mesh: ${mesh.nodes.length} nodes, ${mesh.pods.length} pods (${mesh.pods.filter((p) => p.mesh).length} in the mesh), trust domain ${mesh.trustDomain}`)
  out.push('')
  out.push(...pad([['pod', 'node', 'ip', 'mesh', 'identity'], ...mesh.pods.map((p) => [p.pod, p.node, p.ip, p.mesh ? 'HBONE' : 'no (TCP)', p.mesh ? p.identity : '-'])]).map((l) => `  ${l}`))
  out.push('')
  const section = (title: string, flows: readonly Flow[]): void => {
    if (flows.length === 0) return
    out.push(title)
    const rows = flows.map((f) => [
      `${mark[f.result]} ${f.from} → ${f.to}`,
      f.answeredBy === undefined ? '' : `${f.to.startsWith(f.answeredBy) ? '' : `${f.answeredBy} `}saw ${f.peerSeen ?? '?'}`,
      f.protocol ?? '-',
      f.protocol === 'HBONE' ? `${short(f.sourceIdentity)} → ${short(f.destinationIdentity)}` : '',
      `${f.decision ?? (f.error ? `failed: ${f.error}` : '')}${f.attempts > 1 ? ` (try ${f.attempts})` : ''}`,
    ])
    out.push(...pad(rows).map((l) => `  ${l}`))
    out.push('')
  }
  section('Who reached whom (✓ reached, ✗ denied by policy, ! failed; "saw" is the client address the app saw) — identities and decisions from the node proxies\' access logs:', report.flows.filter((f) => f.phase === 'matrix'))
  if (report.addRemove) {
    const a = report.addRemove
    out.push(
      `Add and remove a pod while traffic runs: ${a.pod} enrolled in ${a.enrolledInMs} ms, released in ${a.releasedInMs} ms; ` +
        `${a.background.reached}/${a.background.sent} requests ${a.background.from} → ${a.background.to} reached meanwhile` +
        (a.background.errors.length === 0 ? '.' : ` (failed: ${a.background.errors.join('; ')}).`),
    )
    section('', report.flows.filter((f) => f.phase === 'add-remove'))
  }
  if (report.restart) {
    const r = report.restart
    out.push(`Node agent restart on ${r.node} (killed with SIGKILL, down for ${r.downFor}): captured pods fail closed, then recover after reconciling (${r.reconciled.enrolled} pods re-enrolled).`)
    section('', report.flows.filter((f) => f.phase === 'agent-down' || f.phase === 'agent-restarted').map((f) => ({ ...f, to: `${f.to} [${f.phase === 'agent-down' ? 'agent down' : 'agent back'}]` })))
  }
  if (report.controlPlaneRestart) {
    const r = report.controlPlaneRestart
    out.push(`Control plane killed with SIGKILL (down for ${r.downFor}): node agents ${r.agentsAlive ? 'kept running' : 'DIED'}; ${r.background.reached}/${r.background.sent} requests ${r.background.from} → ${r.background.to} reached meanwhile; agents reconnected ${r.reconnectedInMs === undefined ? 'NEVER' : `${r.reconnectedInMs} ms after its restart`}.`)
    out.push('')
  }
  if (report.identity) {
    const { impersonation: imp, unauthenticated: un, workloadApi } = report.identity
    out.push('Identity plane:')
    out.push(`  ${imp.refused ? '✗ refused' : '! ISSUED'}  ${imp.node}'s credential asking for ${imp.asked} (a pod on another node): "${imp.answer}"; audit log: ${imp.auditReason ?? '-'}`)
    out.push(`  ${un.refused ? '✗ refused' : '! ISSUED'}  a caller without a credential: "${un.answer}"; audit log: ${un.auditReason ?? '-'}`)
    for (const w of workloadApi) out.push(`  ${w.got.id !== undefined ? '✓' : '✗'} app in ${w.pod} asking ${w.socketOf}'s Workload API: ${w.got.id ?? w.got.error}${w.got.notAfter ? ` (valid until ${w.got.notAfter})` : ''}`)
    out.push('')
  }
  const c = report.capture
  out.push(`Packet capture on the link between the nodes (${c.link}): ${c.packets} packets`)
  out.push(`  port 15008 (HBONE): ${c.connectionsByPort['15008'] ?? 0} TCP connections; TLS records: ${c.tlsRecords.handshake} handshake, ${c.tlsRecords.applicationData} application data; ${c.nonTlsBytesOn15008} bytes that are not TLS`)
  out.push(`  plaintext markers of mesh-to-mesh requests seen: ${c.meshMarkersSeen.length} of ${c.meshMarkers}${c.meshMarkersSeen.length > 0 ? ` (${c.meshMarkersSeen.join(', ')})` : ''}`)
  out.push(`  markers of requests with a non-mesh end (plaintext by design) seen: ${c.plaintextMarkersSeen} of ${c.plaintextMarkers} — the capture does see plaintext when there is some`)
  out.push('')
  out.push('Checks:')
  for (const check of report.checks) out.push(`  ${check.ok ? 'ok  ' : 'FAIL'} ${check.check}: ${check.detail}`)
  out.push('')
  out.push(report.ok ? 'Result: every check passed.' : 'Result: SOME CHECKS FAILED (see above).')
  return out.join('\n')
}
