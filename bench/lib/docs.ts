import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { renderChart } from './chart'
import { machineLine, missedReasons, reportSections } from './report'
import type { BenchResult } from './results'

/**
 * `--docs`: writes this run's tables into docs/performance.md between the
 * `bench:results` markers (the prose around them is written by hand),
 * redraws docs/performance-chart.svg and keeps the run's JSON in
 * bench/results/latest.json (what the doc shows, for machines).
 */

export const DOC = 'docs/performance.md'
export const CHART = 'docs/performance-chart.svg'
export const LATEST = 'bench/results/latest.json'
const BEGIN = '<!-- bench:results:begin (written by `npm run bench -- --docs`; edit the text outside the markers) -->'
const END = '<!-- bench:results:end -->'

/** The generated Markdown of one run. */
export function resultsMarkdown(r: BenchResult): string {
  const lines = [
    `Run of ${r.startedAt} (${r.durationSeconds} s${r.quick ? ', --quick' : ''}) on ${machineLine(r)}.`,
    '',
    `Settings: ${Object.entries(r.settings)
      .map(([k, v]) => `\`${k}=${v}\``)
      .join(', ')}.`,
  ]
  for (const section of reportSections(r)) lines.push('', `### ${section.title}`, '', '```text', section.body, '```')
  const missed = missedReasons(r.targets)
  if (missed.length > 0) lines.push('', 'Missed targets, and what this run shows about why:', '', ...missed)
  for (const extra of r.extras) {
    if (!extra.ok) continue
    lines.push('', `### bench/${extra.file}`, '', '```text', extra.text ?? JSON.stringify(extra.json, null, 2), '```')
  }
  return lines.join('\n')
}

/** Rewrites the results section of the doc and the chart. Returns the paths written. */
export function writeDocs(r: BenchResult): string[] {
  const doc = readFileSync(DOC, 'utf8')
  const begin = doc.indexOf(BEGIN)
  const end = doc.indexOf(END)
  if (begin < 0 || end < begin) throw new Error(`${DOC} has no results markers: expected a line "${BEGIN}" followed by "${END}"`)
  writeFileSync(DOC, `${doc.slice(0, begin + BEGIN.length)}\n${resultsMarkdown(r)}\n${doc.slice(end)}`)
  writeFileSync(CHART, renderChart(r))
  mkdirSync('bench/results', { recursive: true })
  writeFileSync(LATEST, `${JSON.stringify(r, null, 2)}\n`)
  return [DOC, CHART, LATEST]
}
