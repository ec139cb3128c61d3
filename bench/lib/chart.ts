import { SCENARIOS, type BenchResult, type ScenarioResult } from './results'
import type { Summary } from './stats'

/**
 * A dependency-free SVG of the run: grouped bars of throughput and latency
 * per scenario, each bar with a whisker from the fastest to the slowest run.
 */

interface Series {
  name: string
  color: string
  pick: (s: ScenarioResult) => Summary
}

const WIDTH = 980
const HEIGHT = 380
const PANEL = { top: 56, bottom: 300, width: 400 }
const SHORT: Record<string, string> = { direct: 'direct TCP', stunnel: 'stunnel', haproxy: 'HAProxy TCP', meshSameNode: 'mesh, 1 node', meshCrossNode: 'mesh, 2 nodes' }
const escape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

/** A "nice" axis maximum: 1, 2 or 5 times a power of ten, above `value`. */
function niceMax(value: number): number {
  if (!(value > 0)) return 1
  const power = 10 ** Math.floor(Math.log10(value))
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power
  return 10 * power
}

/**
 * One panel of bars. `log` draws a log10 axis: latency percentiles differ by
 * orders of magnitude between paths (p50 in tens of µs, a loaded p99 in ms).
 */
function panel(r: BenchResult, x0: number, title: string, unit: string, series: readonly Series[], log = false): string[] {
  const scenarios = SCENARIOS.map(({ key }) => ({ label: SHORT[key] ?? key, result: r.scenarios[key] }))
  const top = Math.max(...scenarios.flatMap(({ result }) => series.map((s) => s.pick(result).max)))
  const max = log ? 10 ** Math.ceil(Math.log10(Math.max(top, 10))) : niceMax(top)
  const min = log ? 10 ** Math.floor(Math.log10(Math.max(1, Math.min(...scenarios.flatMap(({ result }) => series.map((s) => s.pick(result).min)))))) : 0
  const height = PANEL.bottom - PANEL.top
  const y = (value: number): number => {
    const clamped = Math.min(Math.max(value, min), max)
    const share = log ? (Math.log10(clamped) - Math.log10(min)) / (Math.log10(max) - Math.log10(min)) : clamped / max
    return PANEL.bottom - share * height
  }
  const ticks = log
    ? Array.from({ length: Math.round(Math.log10(max / min)) + 1 }, (_, i) => min * 10 ** i)
    : ((divisions: number) => Array.from({ length: divisions + 1 }, (_, i) => (max / divisions) * i))(
        Number((max / 5).toPrecision(1)) === max / 5 ? 5 : 4,
      )
  const group = PANEL.width / scenarios.length
  const bar = Math.min(28, (group - 16) / series.length)
  const out: string[] = [`<text x="${x0 + PANEL.width / 2}" y="30" class="title">${escape(title)}</text>`]
  for (const value of ticks) {
    const gy = y(value)
    out.push(
      `<line x1="${x0}" y1="${gy}" x2="${x0 + PANEL.width}" y2="${gy}" class="grid"/>`,
      `<text x="${x0 - 6}" y="${gy + 4}" class="tick">${Number(value.toPrecision(3))}</text>`,
    )
  }
  out.push(`<text x="${x0 - 40}" y="${(PANEL.top + PANEL.bottom) / 2}" class="unit" transform="rotate(-90 ${x0 - 40} ${(PANEL.top + PANEL.bottom) / 2})">${escape(unit)}</text>`)
  scenarios.forEach(({ label, result }, gi) => {
    const gx = x0 + gi * group + (group - bar * series.length) / 2
    series.forEach((s, si) => {
      const summary = s.pick(result)
      const bx = gx + si * bar
      const barTop = y(summary.median)
      out.push(
        `<rect x="${bx.toFixed(1)}" y="${barTop.toFixed(1)}" width="${(bar - 2).toFixed(1)}" height="${(PANEL.bottom - barTop).toFixed(1)}" fill="${s.color}"><title>${escape(`${label}, ${s.name}: ${summary.median.toPrecision(3)} ${unit}`)}</title></rect>`,
        `<line x1="${(bx + bar / 2 - 1).toFixed(1)}" y1="${y(summary.min).toFixed(1)}" x2="${(bx + bar / 2 - 1).toFixed(1)}" y2="${y(summary.max).toFixed(1)}" class="whisker"/>`,
        `<text x="${(bx + bar / 2 - 1).toFixed(1)}" y="${(Math.min(barTop, y(summary.max)) - 4).toFixed(1)}" class="value">${Number(summary.median.toPrecision(3))}</text>`,
      )
    })
    out.push(`<text x="${(x0 + gi * group + group / 2).toFixed(1)}" y="${PANEL.bottom + 18}" class="label">${escape(label)}</text>`)
  })
  out.push(`<line x1="${x0}" y1="${PANEL.bottom}" x2="${x0 + PANEL.width}" y2="${PANEL.bottom}" class="axis"/>`)
  series.forEach((s, si) => {
    const lx = x0 + si * 130
    out.push(`<rect x="${lx}" y="${PANEL.bottom + 34}" width="12" height="12" fill="${s.color}"/>`, `<text x="${lx + 18}" y="${PANEL.bottom + 44}" class="legend">${escape(s.name)}</text>`)
  })
  return out
}

/** The chart of one run, as an SVG document. */
export function renderChart(r: BenchResult): string {
  const body = [
    ...panel(r, 70, 'Throughput (higher is better)', 'Gbit/s', [
      { name: '1 stream', color: '#3b6ea8', pick: (s) => s.throughput1Gbps },
      { name: '8 streams', color: '#8fb3dd', pick: (s) => s.throughput8Gbps },
    ]),
    ...panel(
      r,
      70 + PANEL.width + 90,
      'Latency, 64 B round trip (lower is better)',
      'µs (log scale)',
      [
        { name: 'p50', color: '#c0632b', pick: (s) => s.latencyUs.p50 },
        { name: 'p99', color: '#eab38f', pick: (s) => s.latencyUs.p99 },
      ],
      true,
    ),
  ]
  const note = `${r.machine.cores} × ${r.machine.cpuModel}, Linux ${r.machine.kernel}, Node ${r.machine.node} — ${r.startedAt.slice(0, 10)}; bars: median, whiskers: min–max over runs`
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="system-ui, sans-serif">`,
    '<style>.title{font-size:14px;font-weight:600;text-anchor:middle}.tick{font-size:10px;text-anchor:end;fill:#555}.unit{font-size:11px;text-anchor:middle;fill:#333}.label{font-size:11px;text-anchor:middle}.value{font-size:9px;text-anchor:middle;fill:#222}.legend{font-size:11px}.grid{stroke:#e4e4e4}.axis{stroke:#333}.whisker{stroke:#222;stroke-width:1}</style>',
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="#fff"/>`,
    ...body,
    `<text x="${WIDTH / 2}" y="${HEIGHT - 8}" class="label" fill="#555">${escape(note)}</text>`,
    '</svg>',
    '',
  ].join('\n')
}
