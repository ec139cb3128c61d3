import { appendFileSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { createJsonLogger, createPolicyStore, createWorkloadRegistry, type Workload } from '@ambientkit/core'
import { createIdentityManager, createLocalCaSource, loadCertificateAuthority, type CertificateAuthorityPem } from '@ambientkit/identity'
import { createNodeProxy } from '@ambientkit/proxy'
import { applyCapture, openNetns, removeCapture, type Netns } from '@ambientkit/redirect'

/**
 * One node's proxy in its own process, so the bench can read its CPU time
 * and RSS from /proc the way it reads stunnel's. Built from a JSON file
 * (argv[2]) the orchestrator wrote:
 *
 * ```json
 * { "nodeName": "node-1", "ca": { "certificateChainPem": "...", "privateKeyPem": "..." },
 *   "workloads": [ ...every workload of the mesh... ],
 *   "enroll": [ { "uid": "...", "netnsPath": "/run/netns/..." } ] }
 * ```
 *
 * It prints `{"ready":true,"pid":...}` once every enrolled workload has its
 * listeners, answers `{"op":"gc"}` (a full GC when run with --expose-gc, so
 * RSS readings do not depend on when V8 last collected) and
 * `{"op":"protocols"}` (how many access-log entries it wrote per protocol:
 * `local` ones show the same-node fast path was taken),
 * `{"op":"enroll","pods":[{"workload":{...},"netnsPath":"..."}]}` (capture
 * rules applied in each pod, then the pod added to the proxy, one after the
 * other as an agent would; answers the milliseconds it took) and
 * `{"op":"remove","uids":[...]}` (the reverse), and closes the
 * proxy and exits when stdin ends (the orchestrator went away).
 *
 * With `BENCH_PROXY_LOG_DIR` set, the proxy logs at debug level (every
 * connection) to `<dir>/<nodeName>.log`: for finding out why a run failed,
 * not for measuring.
 */
export interface NodeRunnerConfig {
  nodeName: string
  ca: CertificateAuthorityPem
  workloads: Workload[]
  enroll: Array<{ uid: string; netnsPath: string }>
}

async function main(): Promise<void> {
  const file = process.argv[2]
  if (file === undefined) throw new Error('usage: node-runner.ts <config.json>')
  const config = JSON.parse(readFileSync(file, 'utf8')) as NodeRunnerConfig
  const ca = loadCertificateAuthority(config.ca)
  const registry = createWorkloadRegistry()
  for (const workload of config.workloads) registry.upsertWorkload(workload)
  const identities = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
  const logDir = process.env.BENCH_PROXY_LOG_DIR
  const logger = logDir === undefined ? undefined : createJsonLogger({ level: 'debug', write: (line) => appendFileSync(join(logDir, `${config.nodeName}.log`), line) })
  const protocols: Record<string, number> = {}
  const proxy = createNodeProxy({
    nodeName: config.nodeName,
    registry,
    identities,
    policies: createPolicyStore(),
    admin: false,
    sameNodeFastPath: process.env.BENCH_SAME_NODE_FAST_PATH === '1',
    ...(process.env.BENCH_DATA_PATH === 'node' || process.env.BENCH_DATA_PATH === 'native' ? { workloadDefaults: { dataPath: process.env.BENCH_DATA_PATH } } : {}),
    accessLog: (entry) => {
      protocols[entry.protocol] = (protocols[entry.protocol] ?? 0) + 1
      logger?.info({ access: entry }, 'connection')
    },
    ...(logger === undefined ? {} : { logger }),
  })
  const namespaces = new Map<string, Netns>()
  for (const { uid, netnsPath } of config.enroll) {
    const workload = config.workloads.find((w) => w.uid === uid)
    if (workload === undefined) throw new Error(`enroll: no workload with uid ${uid}`)
    const netns = openNetns(netnsPath)
    namespaces.set(uid, netns)
    await proxy.addWorkload(workload, netns)
  }
  const enroll = async (pods: Array<{ workload: Workload; netnsPath: string }>): Promise<number> => {
    const started = performance.now()
    for (const { workload, netnsPath } of pods) {
      registry.upsertWorkload(workload)
      const netns = openNetns(netnsPath)
      namespaces.set(workload.uid, netns)
      await applyCapture(netns)
      await proxy.addWorkload(workload, netns)
    }
    return performance.now() - started
  }
  const remove = async (uids: string[]): Promise<number> => {
    const started = performance.now()
    for (const uid of uids) {
      await proxy.removeWorkload(uid)
      const netns = namespaces.get(uid)
      namespaces.delete(uid)
      if (netns === undefined) continue
      await removeCapture(netns)
      await netns.close()
      registry.removeWorkload(uid)
    }
    return performance.now() - started
  }

  const lines = createInterface({ input: process.stdin })
  lines.on('line', (line) => {
    const command = JSON.parse(line) as { op?: string; pods?: Array<{ workload: Workload; netnsPath: string }>; uids?: string[] }
    const answer = (work: Promise<number>): void => {
      work.then(
        (ms) => process.stdout.write(`${JSON.stringify({ ms })}\n`),
        (err: unknown) => process.stdout.write(`${JSON.stringify({ error: (err as Error).message })}\n`),
      )
    }
    if (command.op === 'enroll') {
      answer(enroll(command.pods ?? []))
    } else if (command.op === 'remove') {
      answer(remove(command.uids ?? []))
    } else if (command.op === 'gc') {
      const gc = (globalThis as { gc?: () => void }).gc
      gc?.()
      process.stdout.write(`${JSON.stringify({ gc: gc !== undefined })}\n`)
    } else if (command.op === 'protocols') {
      process.stdout.write(`${JSON.stringify({ protocols })}\n`)
    } else {
      process.stdout.write(`${JSON.stringify({ error: `unknown op ${JSON.stringify(command.op)}: expected gc, protocols, enroll or remove` })}\n`)
    }
  })
  let closing: Promise<void> | undefined
  const shutdown = (): Promise<void> =>
    (closing ??= (async () => {
      lines.close()
      await proxy.close()
      await identities.close()
      await Promise.all([...namespaces.values()].map((netns) => netns.close()))
      process.exit(0)
    })())
  lines.once('close', () => void shutdown())
  process.once('SIGTERM', () => void shutdown())
  process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid, workloads: config.enroll.length })}\n`)
}

main().catch((err: unknown) => {
  process.stdout.write(`${JSON.stringify({ error: (err as Error).stack ?? String(err) })}\n`)
  process.exit(1)
})
