/** Summary of repeated measurements: the median and how far the runs spread around it. */
export interface Summary {
  median: number
  min: number
  max: number
  p90: number
  p99: number
  runs: number
}

/** The q-quantile (0..1) of sorted values, nearest-rank. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[index]!
}

/** Summarises a list of measurements. */
export function summarize(values: readonly number[]): Summary {
  const sorted = [...values].sort((a, b) => a - b)
  return {
    median: quantile(sorted, 0.5),
    min: sorted[0] ?? Number.NaN,
    max: sorted[sorted.length - 1] ?? Number.NaN,
    p90: quantile(sorted, 0.9),
    p99: quantile(sorted, 0.99),
    runs: sorted.length,
  }
}

/** `median ±spread%` where spread is half the min–max range relative to the median. */
export function formatSummary(summary: Summary, digits = 1): string {
  const spread = summary.median === 0 ? 0 : ((summary.max - summary.min) / 2 / summary.median) * 100
  return `${summary.median.toFixed(digits)} ±${spread.toFixed(0)}%`
}
