// The long fuzz run: every *.fuzz.test.ts target with more inputs than the
// ordinary suite gives them, then a table of the inputs tried per target.
//
//   npm run fuzz -- --runs 100000 --seed 42            # every target
//   npm run fuzz -- --runs 20000 --sequences 2000 packages/proxy   # vitest filters pass through
//
// --runs: inputs per parser property (default 10000). --sequences: HTTP/2
// frame sequences per HBONE data path (default runs / 20). --seed: the seed
// (default: a fixed one; a failure prints the seed and the path to replay).
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'

const { values, positionals } = parseArgs({
  options: { runs: { type: 'string', default: '10000' }, sequences: { type: 'string' }, seed: { type: 'string' }, json: { type: 'boolean', default: false } },
  allowPositionals: true,
})
const integer = (name, text) => {
  if (!/^[0-9]+$/.test(text)) {
    console.error(`--${name} must be a whole number, got ${JSON.stringify(text)}`)
    process.exit(2)
  }
  return text
}
const runs = integer('runs', values.runs)
const sequences = integer('sequences', values.sequences ?? String(Math.max(25, Math.floor(Number(runs) / 20))))
const dir = mkdtempSync(join(tmpdir(), 'ambientkit-fuzz-'))
const report = join(dir, 'inputs.jsonl')
const env = {
  ...process.env,
  AMBIENTKIT_FUZZ_RUNS: runs,
  AMBIENTKIT_FUZZ_SEQUENCES: sequences,
  AMBIENTKIT_FUZZ_REPORT: report,
  ...(values.seed === undefined ? {} : { AMBIENTKIT_FUZZ_SEED: integer('seed', values.seed) }),
}
const started = Date.now()
const files = positionals.length > 0 ? positionals : ['.fuzz.test.ts']
const result = spawnSync('npx', ['vitest', 'run', '--reporter=dot', ...files], { env, stdio: 'inherit' })
const seconds = ((Date.now() - started) / 1000).toFixed(0)

const totals = new Map()
let seed
try {
  for (const line of readFileSync(report, 'utf8').split('\n')) {
    if (line === '') continue
    const entry = JSON.parse(line)
    seed = entry.seed
    totals.set(entry.target, (totals.get(entry.target) ?? 0) + entry.inputs)
  }
} catch {
  // No target reported: the table says so.
}
rmSync(dir, { recursive: true, force: true })
const rows = [...totals].sort(([a], [b]) => a.localeCompare(b))
if (values.json) {
  console.log(JSON.stringify({ seed, runs: Number(runs), sequences: Number(sequences), seconds: Number(seconds), targets: Object.fromEntries(rows) }))
} else {
  console.log(`\nInputs tried (seed ${seed ?? 'none'}, --runs ${runs}, --sequences ${sequences}, ${seconds} s):\n`)
  console.log('| target | inputs |\n| --- | ---: |')
  for (const [target, inputs] of rows) console.log(`| ${target} | ${inputs.toLocaleString('en-US')} |`)
}
process.exit(result.status ?? 1)
