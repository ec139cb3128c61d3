/**
 * `npx tsx bench/capture.ts [--quick] [--json] [--namespaces N]`: what
 * in-pod capture costs with @ambientkit/redirect.
 *
 * - apply and remove time per namespace, per backend, over N fresh
 *   namespaces (default 100; `--quick` 20): median and p99;
 * - the wall time to capture all N namespaces, one after another and 4 at
 *   a time (target: 100 in under 1.5 s);
 * - the cost of `originalDestination` (SO_ORIGINAL_DST) per accepted,
 *   redirected connection.
 *
 * Targets on the reference machine: apply ≤ 8 ms median (the floor is one
 * `iptables-restore` or `nft -f` process per namespace, about 3 ms).
 * Namespaces are named `ak-bcap-<pid>-<n>` and always deleted, also on
 * failure or Ctrl-C.
 */
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import type { Server, Socket } from 'node:net'
import { applyCapture, openNetns, originalDestination, OUTBOUND_PORT, removeCapture, type CaptureBackend, type Netns } from '@ambientkit/redirect'
import { formatSummary, summarize, type Summary } from './lib/stats'
import { formatTable, wantsJson } from './lib/table'

const argv = process.argv.slice(2)
const quick = argv.includes('--quick')
const countArg = argv.indexOf('--namespaces')
const COUNT = countArg >= 0 ? Number(argv[countArg + 1]) : quick ? 20 : 100
const CONNECTIONS = quick ? 200 : 2000
const BACKENDS: readonly CaptureBackend[] = ['nftables', 'iptables']
if (!Number.isInteger(COUNT) || COUNT < 1) throw new Error(`--namespaces: expected a positive integer, got ${argv[countArg + 1]}`)

const log = (message: string): void => {
  if (!wantsJson) process.stderr.write(`bench/capture: ${message}\n`)
}

const prefix = `ak-bcap-${process.pid}`
const created: string[] = []
let counter = 0

/** `count` fresh namespaces with lo up (setup, not timed). */
function makeNamespaces(count: number): string[] {
  const names = Array.from({ length: count }, () => `${prefix}-${++counter}`)
  execFileSync('ip', ['-batch', '-'], { input: names.map((n) => `netns add ${n}`).join('\n') })
  created.push(...names)
  for (const name of names) execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up'])
  return names
}

function deleteNamespaces(names: readonly string[]): void {
  if (names.length === 0) return
  execFileSync('ip', ['-force', '-batch', '-'], { input: names.map((n) => `netns del ${n}`).join('\n'), stdio: ['pipe', 'ignore', 'ignore'] })
  for (const name of names) created.splice(created.indexOf(name), 1)
}

function cleanupAll(): void {
  try {
    deleteNamespaces([...created])
  } catch {
    // Best effort on the way out; a stale namespace is named after our pid.
  }
}
process.on('SIGINT', () => {
  cleanupAll()
  process.exit(130)
})
process.on('SIGTERM', () => {
  cleanupAll()
  process.exit(143)
})

const ms = (start: bigint): number => Number(process.hrtime.bigint() - start) / 1e6

interface BackendResult {
  backend: CaptureBackend
  apply: Summary
  remove: Summary
  sequentialTotalMs: number
  concurrent4TotalMs: number
}

async function measureBackend(backend: CaptureBackend): Promise<BackendResult> {
  const names = makeNamespaces(COUNT)
  const handles = names.map((name) => openNetns(name))
  try {
    const apply: number[] = []
    const remove: number[] = []
    const allStart = process.hrtime.bigint()
    for (const ns of handles) {
      const start = process.hrtime.bigint()
      await applyCapture(ns, {}, { backend })
      apply.push(ms(start))
    }
    const sequentialTotalMs = ms(allStart)
    for (const ns of handles) {
      const start = process.hrtime.bigint()
      await removeCapture(ns)
      remove.push(ms(start))
    }
    // The same namespaces again, 4 at a time: what an agent enrolling a node's pods would see.
    const queue = [...handles]
    const concurrentStart = process.hrtime.bigint()
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let ns = queue.shift(); ns !== undefined; ns = queue.shift()) await applyCapture(ns, {}, { backend })
      }),
    )
    const concurrent4TotalMs = ms(concurrentStart)
    return { backend, apply: summarize(apply), remove: summarize(remove), sequentialTotalMs, concurrent4TotalMs }
  } finally {
    for (const handle of handles) await handle.close()
    deleteNamespaces(names)
  }
}

/** Time spent in originalDestination() per redirected connection, in microseconds. */
async function measureOriginalDst(): Promise<Summary> {
  const [name] = makeNamespaces(1)
  // A veth pair gives the namespace a route to 10.123.0.0/24, the destinations the "app" dials.
  execFileSync('ip', ['-n', name!, '-batch', '-'], { input: ['link add d0 type veth peer name d1', 'address add 10.123.0.2/24 dev d0', 'link set d1 up', 'link set d0 up'].join('\n') })
  const ns: Netns = openNetns(name!)
  let server: Server | undefined
  try {
    await applyCapture(ns, {}, { backend: 'nftables' })
    server = await ns.listen({ host: '127.0.0.1', port: OUTBOUND_PORT })
    const costs: number[] = []
    for (let i = 0; i < CONNECTIONS; i++) {
      const accepted = once(server, 'connection') as Promise<[Socket]>
      // A destination outside the namespace's own addresses, so the connection is captured.
      const client = await ns.connect({ host: '10.123.0.1', port: 1000 + (i % 5000) }).catch((err: unknown) => {
        throw new Error(`connect through capture failed: ${(err as Error).message}`)
      })
      const [socket] = await accepted
      const start = process.hrtime.bigint()
      originalDestination(socket)
      costs.push(Number(process.hrtime.bigint() - start) / 1e3)
      socket.destroy()
      client.destroy()
    }
    return summarize(costs)
  } finally {
    server?.close()
    await ns.close()
    deleteNamespaces([name!])
  }
}

async function main(): Promise<void> {
  const results: BackendResult[] = []
  try {
    for (const backend of BACKENDS) {
      log(`${backend}: applying and removing capture in ${COUNT} fresh namespaces`)
      results.push(await measureBackend(backend))
    }
    log(`originalDestination over ${CONNECTIONS} redirected connections`)
    const originalDst = await measureOriginalDst()
    if (wantsJson) {
      process.stdout.write(`${JSON.stringify({ namespaces: COUNT, connections: CONNECTIONS, backends: results, originalDestinationMicros: originalDst }, null, 2)}\n`)
      return
    }
    const rows = [['measure', ...results.map((r) => r.backend)]]
    rows.push(['apply, median ms (±spread)', ...results.map((r) => formatSummary(r.apply, 2))])
    rows.push(['apply, p99 ms', ...results.map((r) => r.apply.p99.toFixed(2))])
    rows.push(['remove, median ms (±spread)', ...results.map((r) => formatSummary(r.remove, 2))])
    rows.push(['remove, p99 ms', ...results.map((r) => r.remove.p99.toFixed(2))])
    rows.push([`${COUNT} namespaces, one at a time, s`, ...results.map((r) => (r.sequentialTotalMs / 1000).toFixed(2))])
    rows.push([`${COUNT} namespaces, 4 at a time, s`, ...results.map((r) => (r.concurrent4TotalMs / 1000).toFixed(2))])
    console.log(formatTable(rows))
    console.log()
    console.log(
      formatTable([
        ['originalDestination per connection', 'median µs', 'p99 µs', 'connections'],
        ['SO_ORIGINAL_DST', originalDst.median.toFixed(1), originalDst.p99.toFixed(1), String(originalDst.runs)],
      ]),
    )
    console.log('\ntargets: apply ≤ 8 ms median; 100 namespaces captured in < 1.5 s')
  } finally {
    cleanupAll()
  }
}

await main()
