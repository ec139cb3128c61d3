import { MESH_SCENARIOS, SCENARIOS, type BenchResult, type ScenarioKey, type ScenarioResult, type TargetResult } from './results'
import { formatSummary, type Summary } from './stats'
import { formatTable } from './table'

/** Turns a run's figures into tables and a verdict on each target of issue 7. */

const fmt = (summary: Summary | null | undefined, digits = 1): string => (summary === null || summary === undefined ? '—' : formatSummary(summary, digits))
const ratio = (value: number | null): string => (value === null ? '—' : `${value.toFixed(2)}×`)
const mibSummary = (s: Summary | undefined): string =>
  s === undefined ? '—' : formatSummary({ ...s, median: s.median / 1024, min: s.min / 1024, max: s.max / 1024, p90: s.p90 / 1024, p99: s.p99 / 1024 }, 1)

/** Label of a mesh scenario in target rows. */
const shortLabel: Record<ScenarioKey, string> = { direct: 'direct', stunnel: 'stunnel', haproxy: 'HAProxy', meshSameNode: 'same node', meshCrossNode: 'cross node' }

/**
 * What HAProxy relaying plain TCP (no TLS, no HTTP/2, no capture) reached on
 * a figure in this run, and whether the target lies beyond even that: the
 * least any pair of proxies adds on this machine.
 */
function reference(r: BenchResult, figure: string, value: string, beyond: boolean): string {
  return (
    ` HAProxy relaying plain TCP between the plain pods, with no TLS, no HTTP/2 and no capture (the least a pair of proxies does), ${figure} ${value} in this run` +
    (beyond ? ': the target lies beyond what two proxies reached on this machine.' : ': two proxies can meet it here, so the gap is the mesh\'s own work.')
  )
}

/**
 * What limits a mesh figure, with this run's evidence. Written from the
 * profiles in docs/performance.md ("What limits each figure"): on the
 * native data path an HBONE session (one TLS connection) runs on one of a
 * few data-path threads and no JavaScript runs per byte, while each new
 * connection is decided on the proxy's JavaScript thread; on the Node path
 * everything, every chunk included, runs on that one thread. The numbers
 * come from this run.
 */
function why(target: string, key: ScenarioKey, r: BenchResult): string {
  const native = r.settings.dataPath === 'native'
  const s = r.scenarios[key]
  const cores = s.proxyCores?.median
  const oneProcess = key === 'meshSameNode'
  const wait = s.proxyRunQueueWait?.median
  const cpu =
    cores === undefined
      ? ''
      : ` The proxies used ${cores.toFixed(2)} cores during the single-stream runs${oneProcess ? ' (one process for both ends)' : ''}` +
        (wait === undefined ? '.' : `, and the busiest proxy thread waited for a CPU ${(wait * 100).toFixed(0)}% of the time${wait > 0.2 ? ' (more threads wanted a CPU than the machine has: the client, the server and the proxies\' data-path threads share its cores)' : ''}.`)
  const stunnelCpu = r.scenarios.stunnel.cpuSecondsPerGB?.total.median
  const meshCpu = s.cpuSecondsPerGB?.total.median
  const perGb = meshCpu === undefined || stunnelCpu === undefined ? '' : ` Per GB the proxies spent ${meshCpu.toFixed(1)} CPU-s (stunnel ${stunnelCpu.toFixed(1)}).`
  const perConn = s.cpuMsPerConnection?.median
  const stunnelConn = r.scenarios.stunnel.cpuMsPerConnection?.median
  const direct = r.scenarios.direct
  const haproxy = r.scenarios.haproxy
  const haproxyAdded = haproxy.latencyUs.p50.median - direct.latencyUs.p50.median
  const haproxyRate = haproxy.connectionsPerSecond.median
  const haproxyConn = haproxy.cpuMsPerConnection?.median
  switch (target) {
    case 'throughput':
      return native
        ? `Per byte each proxy reads a socket, frames (HTTP/2 DATA, 16 KiB), runs AES-GCM and writes, all in the addon on the data-path thread that runs the HBONE session; ` +
            `perf of a loopback tunnel puts AES-GCM at ≈27%, kernel socket copies at ≈17% and memory copies at ≈8% of that thread. ` +
            (oneProcess ? `On one node both ends are one process, whose client and server sessions run on two data-path threads. ` : '') +
            `The 8 streams share one HBONE session, i.e. one TLS connection on one thread per side, where stunnel has a thread per connection; ` +
            `on 2 cores, client, server and both proxy sides share the CPUs.${perGb}${cpu}`
        : `Per byte each proxy runs AES-GCM in OpenSSL, nghttp2's DATA framing (16 KiB frames), two kernel socket copies, and allocates a Buffer per read and per frame; ` +
            `perf shows V8's major GC (triggered by that external memory) at 15–20% of proxy CPU, and the 8 streams share one HBONE session, i.e. one TLS connection on one thread, ` +
            `where stunnel has a thread per connection.${perGb}${cpu}`
    case 'latency-p50':
      return (
        `A round trip crosses four extra sockets (app→proxy→proxy→app and back), a TLS record and an HTTP/2 DATA frame per direction per hop, ` +
        `and wakes each proxy's event loop once per direction; on a 2-core machine shared by client, server and proxies every wake-up can wait for a CPU.` +
        (s.cpuUsPerRoundTrip === null ? '' : ` The proxies spent ${s.cpuUsPerRoundTrip.median.toFixed(0)} µs of CPU per round trip, a floor for the added latency even on an idle machine.`) +
        reference(r, 'added', `+${haproxyAdded.toFixed(1)} µs at p50`, haproxyAdded > 25) +
        cpu
      )
    case 'latency-p99':
      return (
        `Tail latency follows scheduling: a proxy thread that becomes runnable while another process holds the CPU waits up to a scheduler slice (a few ms), ` +
        `and the mesh path has two more busy processes than the direct one on 2 cores${native ? '' : '; V8 GC pauses add to it'}. ` +
        `stunnel, with the same two, ${r.scenarios.stunnel.latencyUs.p99.median > 2 * direct.latencyUs.p99.median ? 'missed it too' : 'met it'} in this run (${r.scenarios.stunnel.latencyUs.p99.median.toFixed(1)} µs).` +
        reference(r, 'had a p99 of', `${haproxy.latencyUs.p99.median.toFixed(1)} µs`, haproxy.latencyUs.p99.median > 2 * direct.latencyUs.p99.median) +
        cpu
      )
    case 'connections':
      return (
        `The HBONE session is pooled, so no TLS handshake is involved: the cost is per-connection work${native ? ", decided on each proxy's JavaScript thread and handed to and from its data-path threads" : ' on one thread per node'}` +
        (perConn === undefined ? '' : ` (${perConn.toFixed(2)} ms of proxy CPU per connection${stunnelConn === undefined ? '' : `, stunnel ${stunnelConn.toFixed(2)} ms with a resumed TLS session`})`) +
        `: accept and SO_ORIGINAL_DST, an HTTP/2 stream with CONNECT and 200, authorization, an upstream connect inside the pod's netns, two splices, metrics and the access log. ` +
        `The target asks for ≈${Math.round((100 * 10 * (r.scenarios.stunnel.connectionsPerSecond?.median ?? 0)) / (r.scenarios.direct.connectionsPerSecond?.median ?? 1))}% of the direct path's rate through two proxies, ` +
        `each of which terminates one more TCP connection per side than the direct path has` +
        (native
          ? `; on the native data path the bytes never reach JavaScript, but this per-connection control still runs there, next to the kernel's share: accepting, connecting from inside the pod's namespace (setns there and back), closing.`
          : `; bench/hbone.ts shows HBONE tunnels alone (no capture, no app sockets, loopback) opening at ≈2 900/s with 16 in flight, so Node's HTTP/2 stream setup by itself is below the target.`) +
        reference(
          r,
          'made',
          `${haproxyRate.toFixed(0)} connections/s (${(haproxyRate / r.scenarios.stunnel.connectionsPerSecond.median).toFixed(1)}× stunnel's${haproxyConn === undefined ? '' : `, ${haproxyConn.toFixed(2)} ms of CPU per connection`})`,
          haproxyRate < 10 * r.scenarios.stunnel.connectionsPerSecond.median,
        ) +
        cpu
      )
    case 'idle-memory':
      return native
        ? `An idle connection holds per proxy side a pipe in the addon (≈0.3 KiB; its buffers are freed once empty), nghttp2's stream state, and a few JavaScript objects (the tracked connection, the tunnel handle); ` +
            `the rest of the figure is V8's young generation growing while the connections open, charged to them whole.`
        : (
        `An idle connection holds ≈3–4 KiB of V8 heap per proxy side (a socket and an HTTP/2 stream with their Node stream state, the splice and the tracked connection) and ≈1.5 KiB native (TCP wrap, nghttp2 stream). ` +
        `Most of the figure is V8's young generation, which grows while the connections open (up to 2 × 16 MiB per process) and is charged to them whole: on the client side it reaches that cap because Node 20's ` +
        `ClientHttp2Session.request() leaves old-space garbage per stream (AsyncResource.bind → util.deprecate → setPrototypeOf; nodejs/node#59195) that keeps young objects alive through scavenges.`
      )
    case 'capture':
      return (
        `iptables runs one iptables-restore per family in a fresh pod (≈2–3 ms each, side by side, started with posix_spawn); nftables runs in-process through libnftables. ` +
        `Either misses only on a machine too busy to run them: a program that has to wait for a CPU, or the kernel's RCU grace period when a transaction deleted rules (a pod that was not fresh).`
      )
    default:
      return ''
  }
}

/** Judges every target of issue 7 on this run. */
export function judgeTargets(r: BenchResult): TargetResult[] {
  const out: TargetResult[] = []
  const push = (target: string, scenario: string, value: string, limit: string, met: boolean, because: () => string): void => {
    out.push({ target, scenario, value, limit, met, ...(met ? {} : { why: because() }) })
  }
  const direct = r.scenarios.direct
  const stunnel = r.scenarios.stunnel
  for (const key of MESH_SCENARIOS) {
    const s = r.scenarios[key]
    const label = shortLabel[key]
    for (const [name, figure] of [
      ['throughput, 1 stream', 'throughput1Gbps'],
      ['throughput, 8 streams', 'throughput8Gbps'],
    ] as const) {
      const value = s[figure].median
      const limit = stunnel[figure].median
      push(`${name} ≥ stunnel`, label, `${value.toFixed(2)} Gbit/s`, `≥ ${limit.toFixed(2)} Gbit/s`, value >= limit, () => why('throughput', key, r))
    }
    const added = s.latencyUs.p50.median - direct.latencyUs.p50.median
    push('p50 latency added ≤ 25 µs', label, `+${added.toFixed(1)} µs`, '≤ +25 µs', added <= 25, () => why('latency-p50', key, r))
    const p99 = s.latencyUs.p99.median
    const p99Limit = 2 * direct.latencyUs.p99.median
    push('p99 latency ≤ 2× direct', label, `${p99.toFixed(1)} µs`, `≤ ${p99Limit.toFixed(1)} µs`, p99 <= p99Limit, () => why('latency-p99', key, r))
    const rate = s.connectionsPerSecond.median
    const rateLimit = 10 * stunnel.connectionsPerSecond.median
    push('connections/s ≥ 10× stunnel', label, `${rate.toFixed(0)}/s`, `≥ ${rateLimit.toFixed(0)}/s`, rate >= rateLimit, () => why('connections', key, r))
    const kib = s.kibPerIdleConnection?.median ?? Number.NaN
    push('≤ 32 KiB per idle proxied connection', label, `${kib.toFixed(1)} KiB`, '≤ 32 KiB', kib <= 32, () => why('idle-memory', key, r))
  }
  const nft = r.capture.nftables
  const ipt = r.capture.iptables
  for (const [backend, figures] of [
    ['nftables', nft],
    ['iptables', ipt],
  ] as const) {
    if ('error' in figures) {
      push('capture apply ≤ 8 ms median', backend, 'failed', '≤ 8 ms', false, () => figures.error)
    } else {
      const value = figures.applyMs.median
      push('capture apply ≤ 8 ms median', backend, `${value.toFixed(1)} ms`, '≤ 8 ms', value <= 8, () => why('capture', 'direct', r))
    }
  }
  return out
}

function scenarioTable(r: BenchResult): string {
  const header = ['figure (median ±spread)', ...SCENARIOS.map((s) => s.label)]
  const row = (name: string, pick: (s: ScenarioResult) => Summary, digits = 1): string[] => [name, ...SCENARIOS.map(({ key }) => fmt(pick(r.scenarios[key]), digits))]
  return formatTable([
    header,
    row('throughput, 1 stream (Gbit/s)', (s) => s.throughput1Gbps, 2),
    row('throughput, 8 streams (Gbit/s)', (s) => s.throughput8Gbps, 2),
    row('latency p50, 64 B (µs)', (s) => s.latencyUs.p50),
    row('latency p90 (µs)', (s) => s.latencyUs.p90),
    row('latency p99 (µs)', (s) => s.latencyUs.p99),
    row('new connections/s', (s) => s.connectionsPerSecond, 0),
  ])
}

function ratioTable(r: BenchResult): string {
  const names: Array<[string, string]> = [
    ['throughput1', 'throughput, 1 stream'],
    ['throughput8', 'throughput, 8 streams'],
    ['latencyP50', 'latency p50'],
    ['latencyP99', 'latency p99'],
    ['connectionsPerSecond', 'new connections/s'],
  ]
  return formatTable([
    ['mesh ÷ baseline (same run)', 'same node ÷ direct', 'same node ÷ stunnel', 'cross node ÷ direct', 'cross node ÷ stunnel'],
    ...names.map(([key, label]) => {
      const same = r.ratios.meshSameNode?.[key]
      const cross = r.ratios.meshCrossNode?.[key]
      return [label, ratio(same?.vsDirect ?? null), ratio(same?.vsStunnel ?? null), ratio(cross?.vsDirect ?? null), ratio(cross?.vsStunnel ?? null)]
    }),
  ])
}

function resourceTable(r: BenchResult): string {
  const keys: ScenarioKey[] = ['stunnel', 'haproxy', 'meshSameNode', 'meshCrossNode']
  const cell = (key: ScenarioKey, pick: (s: ScenarioResult) => string): string => pick(r.scenarios[key])
  const row = (name: string, pick: (s: ScenarioResult) => string): string[] => [name, ...keys.map((key) => cell(key, pick))]
  const idle = Number(r.settings.idleConnections)
  return formatTable([
    ['proxy processes', ...keys.map((key) => r.scenarios[key].label)],
    row('CPU s per GB, client side', (s) => fmt(s.cpuSecondsPerGB?.client, 2)),
    row('CPU s per GB, server side', (s) => fmt(s.cpuSecondsPerGB?.server, 2)),
    row('CPU s per GB, total', (s) => fmt(s.cpuSecondsPerGB?.total, 2)),
    row('cores busy, 1 stream', (s) => fmt(s.proxyCores, 2)),
    row('waiting for a CPU, 1 stream', (s) => (s.proxyRunQueueWait === null ? '—' : `${(s.proxyRunQueueWait.median * 100).toFixed(0)}%`)),
    row('CPU µs per 64 B round trip', (s) => fmt(s.cpuUsPerRoundTrip, 0)),
    row('CPU ms per new connection', (s) => fmt(s.cpuMsPerConnection, 2)),
    row('RSS idle, fresh process (MiB)', (s) => mibSummary(s.rssKiB?.idle)),
    row(`RSS with ${idle} idle conns (MiB)`, (s) => mibSummary(s.rssKiB?.withIdleConnections)),
    row('KiB per idle connection', (s) => fmt(s.kibPerIdleConnection, 1)),
    row('RSS peak, 8 streams (MiB)', (s) => mibSummary(s.rssKiB?.underLoad)),
  ])
}

function controlTable(r: BenchResult): string {
  const rows: string[][] = [['control plane', 'median ±spread']]
  for (const backend of ['nftables', 'iptables'] as const) {
    const figures = r.capture[backend]
    if ('error' in figures) rows.push([`capture (${backend})`, `failed: ${figures.error.slice(0, 60)}`])
    else rows.push([`capture apply, ${backend} (ms)`, fmt(figures.applyMs, 2)], [`capture remove, ${backend} (ms)`, fmt(figures.removeMs, 2)])
  }
  rows.push(['mTLS handshakes/s (SVIDs, sequential)', fmt(r.handshakesPerSecond, 0)])
  return formatTable(rows)
}

/** The targets table: every target with met/missed, and why when missed. */
export function targetTable(targets: readonly TargetResult[]): string {
  return formatTable([['target', 'path', 'measured', 'target', 'verdict'], ...targets.map((t) => [t.target, t.scenario, t.value, t.limit, t.met ? 'met' : 'MISSED'])])
}

/** Why each missed target was missed, one paragraph per target and path. */
export function missedReasons(targets: readonly TargetResult[]): string[] {
  return targets.filter((t) => !t.met).map((t) => `- ${t.target} (${t.scenario}): ${t.why}`)
}

/** The machine line. */
export function machineLine(r: BenchResult): string {
  const m = r.machine
  return `${m.cores} × ${m.cpuModel}, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}, ${m.stunnel}, ${m.haproxy ?? 'HAProxy unknown'}, ${m.iperf3}; load average ${m.loadAverage} when the run started`
}

/** The sections every report shows (text and docs). */
export function reportSections(r: BenchResult): Array<{ title: string; body: string }> {
  return [
    { title: 'Throughput, latency and connection rate', body: scenarioTable(r) },
    { title: 'Mesh relative to the baselines', body: ratioTable(r) },
    { title: 'Proxy CPU and memory', body: resourceTable(r) },
    { title: 'Capture and identity', body: controlTable(r) },
    { title: 'Targets', body: targetTable(r.targets) },
  ]
}

/** The whole plain-text report. */
export function printReport(r: BenchResult): string {
  const parts = [
    `ambientkit bench${r.quick ? ' (--quick: short runs, figures are rough)' : ''} — ${r.startedAt}, ${r.durationSeconds} s`,
    machineLine(r),
    `settings: ${Object.entries(r.settings)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`,
  ]
  for (const section of reportSections(r)) parts.push('', `## ${section.title}`, section.body)
  const missed = missedReasons(r.targets)
  if (missed.length > 0) parts.push('', 'Why missed targets were missed:', ...missed)
  for (const extra of r.extras) {
    parts.push('', `## bench/${extra.file}`, extra.ok ? (extra.text ?? JSON.stringify(extra.json, null, 2)) : `(${extra.error})`)
  }
  return parts.join('\n')
}
