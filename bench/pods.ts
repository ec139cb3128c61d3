/**
 * Many pods enrolled on one node: `--pods` network namespaces (default
 * 1,000), each with an address, enrolled one after the other in one node
 * proxy process the way a node agent enrolls them (capture rules applied in
 * the pod, then its listeners opened inside it), in ten batches, then
 * removed the same way. It reports the time to enroll and remove them all
 * (and per batch, which shows whether a pod costs more when many are
 * there), and the proxy's memory, descriptors and sockets per pod.
 *
 * Run as root: `npx tsx --tsconfig tsconfig.json bench/pods.ts [--pods N]
 * [--quick] [--json]`. When a batch fails, the run stops there and reports
 * how many pods were enrolled and why the next could not be.
 */
import type { Workload } from '@ambientkit/core'
import { createTestNetwork, type TestNamespace } from '../test/support/netns'
import { stopAll } from './lib/processes'
import { footprint, raiseFileLimit, report, startNodeProxy } from './lib/scale'
import { formatTable } from './lib/table'
import { PREFIX, sweepStaleNamespaces } from './lib/topology'

const args = process.argv.slice(2)
const option = (name: string): string | undefined => args.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3) ?? (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : undefined)
const pods = Number(option('pods') ?? (args.includes('--quick') ? 10 : 1000))
if (!Number.isInteger(pods) || pods < 1 || pods > 60_000) {
  process.stderr.write(`pods: --pods must be a whole number from 1 to 60000, got ${JSON.stringify(option('pods'))}\n`)
  process.exit(2)
}
const BATCHES = Math.min(10, pods)
const log = (message: string): void => void process.stderr.write(`pods: ${message}\n`)

/**
 * The i-th pod's address: 10.210.0.1 onwards, on its loopback. Enrollment
 * needs the namespace and the address, not a link: no veth into the node's
 * bridge (a Linux bridge takes at most 1,024 ports; the dummy link type is
 * not available in every kernel).
 */
const addressOf = (i: number): string => `10.${210 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`

async function main(): Promise<void> {
  sweepStaleNamespaces()
  raiseFileLimit(Math.max(65_536, pods * 16), log)
  const network = createTestNetwork(PREFIX)
  const result: {
    pods: number
    enrolled: number
    removed: number
    createSeconds: number
    enrollSeconds: number
    removeSeconds: number
    enrollMsPerPodByBatch: number[]
    removeMsPerPodByBatch: number[]
    before: { rssKiB: number; fds: number; sockets: number }
    enrolledFootprint: { rssKiB: number; fds: number; sockets: number }
    after: { rssKiB: number; fds: number; sockets: number }
    perPod: { kib: number; fds: number; sockets: number }
    stoppedBy?: string
  } = {
    pods,
    enrolled: 0,
    removed: 0,
    createSeconds: 0,
    enrollSeconds: 0,
    removeSeconds: 0,
    enrollMsPerPodByBatch: [],
    removeMsPerPodByBatch: [],
    before: { rssKiB: 0, fds: 0, sockets: 0 },
    enrolledFootprint: { rssKiB: 0, fds: 0, sockets: 0 },
    after: { rssKiB: 0, fds: 0, sockets: 0 },
    perPod: { kib: 0, fds: 0, sockets: 0 },
  }
  let proxy: Awaited<ReturnType<typeof startNodeProxy>> | undefined
  try {
    log(`creating ${pods} namespaces`)
    const created = performance.now()
    const namespaces: Array<{ ns: TestNamespace; workload: Workload }> = []
    for (let i = 1; i <= pods; i++) {
      let ns: TestNamespace
      try {
        ns = await network.addNamespace('pod')
        await ns.exec('ip', ['-batch', '-'], { input: `address add ${addressOf(i)}/32 dev lo\n` })
      } catch (err) {
        result.stoppedBy = `namespace ${i}: ${(err as Error).message}`
        break
      }
      namespaces.push({
        ns,
        workload: { uid: `uid-pod-${i}`, name: `pod-${i}`, namespace: 'bench', serviceAccount: 'pod', node: 'node-1', addresses: [addressOf(i)], protocol: 'HBONE', labels: { app: 'pod' } },
      })
    }
    result.createSeconds = (performance.now() - created) / 1000
    proxy = await startNodeProxy([], [])
    result.before = await footprint(proxy.runner)
    const batches = Array.from({ length: BATCHES }, (_, b) => namespaces.slice(Math.floor((b * namespaces.length) / BATCHES), Math.floor(((b + 1) * namespaces.length) / BATCHES)))
    for (const [b, batch] of batches.entries()) {
      try {
        const { ms } = await proxy.runner.request<{ ms: number }>({ op: 'enroll', pods: batch.map(({ ns, workload }) => ({ workload, netnsPath: ns.path })) }, 1_800_000)
        result.enrollSeconds += ms / 1000
        result.enrollMsPerPodByBatch.push(ms / batch.length)
        result.enrolled += batch.length
        log(`enrolled ${result.enrolled} (batch ${b + 1}: ${(ms / batch.length).toFixed(1)} ms a pod)`)
      } catch (err) {
        result.stoppedBy = `enrolling batch ${b + 1} after ${result.enrolled} pods: ${(err as Error).message}`
        break
      }
    }
    result.enrolledFootprint = await footprint(proxy.runner)
    const enrolled = namespaces.slice(0, result.enrolled)
    const removals = batches.map((batch) => batch.filter((pod) => enrolled.includes(pod))).filter((batch) => batch.length > 0)
    for (const batch of removals) {
      const { ms } = await proxy.runner.request<{ ms: number }>({ op: 'remove', uids: batch.map(({ workload }) => workload.uid) }, 1_800_000)
      result.removeSeconds += ms / 1000
      result.removeMsPerPodByBatch.push(ms / batch.length)
      result.removed += batch.length
    }
    result.after = await footprint(proxy.runner)
    const n = Math.max(1, result.enrolled)
    result.perPod = {
      kib: (result.enrolledFootprint.rssKiB - result.before.rssKiB) / n,
      fds: (result.enrolledFootprint.fds - result.before.fds) / n,
      sockets: (result.enrolledFootprint.sockets - result.before.sockets) / n,
    }
  } finally {
    await proxy?.close()
    await stopAll()
    log('deleting the namespaces')
    await network.cleanup()
  }
  const f = (value: number, digits = 1): string => value.toFixed(digits)
  const rows = [
    ['pods', 'create netns (s)', 'enroll all (s)', 'ms/pod, first/last batch', 'remove all (s)', 'RSS before/enrolled/after (MiB)', 'KiB/pod', 'fds/pod', 'sockets/pod', 'fds before/after'],
    [
      `${result.enrolled}/${result.pods}`,
      f(result.createSeconds),
      f(result.enrollSeconds),
      `${f(result.enrollMsPerPodByBatch[0] ?? 0)} / ${f(result.enrollMsPerPodByBatch.at(-1) ?? 0)}`,
      f(result.removeSeconds),
      [result.before, result.enrolledFootprint, result.after].map((x) => f(x.rssKiB / 1024)).join(' / '),
      f(result.perPod.kib),
      f(result.perPod.fds, 2),
      f(result.perPod.sockets, 2),
      `${result.before.fds} / ${result.after.fds}`,
    ],
  ]
  const stopped = result.stoppedBy === undefined ? '' : `\nStopped: ${result.stoppedBy}\n`
  report(`\nPods enrolled on one node proxy (capture rules and listeners per pod):\n\n${formatTable(rows)}\n${stopped}`, result)
}

process.once('SIGINT', () => void stopAll().then(() => process.exit(130)))
main().catch((err: unknown) => {
  process.stderr.write(`pods: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
