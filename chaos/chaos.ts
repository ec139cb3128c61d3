// `npm run chaos`: the local mesh (examples/local-mesh) under steady load
// while a scheduler driven by a seeded PRNG injects faults, with invariants
// checked the whole time. Started by chaos/run.mjs (root and tools checked
// there). The mesh is the demo's own (`demo.mjs --up`, `--down`); this file
// only adds load, faults and checks, through the example's exports.
import { execFile } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import type { Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { openNetns, type Netns } from '@ambientkit/redirect'
import { formatTable } from '../bench/lib/table'
import { rssKiB } from '../bench/lib/proc'
import { quantile } from '../bench/lib/stats'
import { callControlPlane } from '../examples/local-mesh/src/client'
import { loadMeshConfig, podUid, type MeshConfig, type NodeConfig, type PodConfig } from '../examples/local-mesh/src/config'
import { ADMIN_PORT, DEFAULT_CONFIG, EXAMPLE_DIR, PREFIX, STATE_DIR, netnsName, netnsPath, state } from '../examples/local-mesh/src/paths'
import { analyseCapture, captureLink, type Capture } from '../examples/local-mesh/src/pcap'
import { forgetProcess, startProcess, stopPid, tsEntry, type DemoProcess } from '../examples/local-mesh/src/processes'
import { createPod, deleteNamespace, demoNamespaces, linkInterface, run } from '../examples/local-mesh/src/topology'
import { requestFromPod } from '../examples/local-mesh/src/traffic'

const { values: flags } = parseArgs({
  options: {
    duration: { type: 'string', default: '3m' },
    seed: { type: 'string' },
    json: { type: 'boolean', default: false },
    config: { type: 'string', default: DEFAULT_CONFIG },
    'svid-ttl': { type: 'string', default: '20' },
    faults: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
})

const USAGE = `usage: sudo npm run chaos -- [--duration 3m] [--seed N] [--json] [--svid-ttl 20] [--config mesh.yaml]
  --duration  how long faults are injected: 90s, 3m, 300 (seconds); default 3m
  --seed      the scheduler's seed (printed by every run): the same seed replays the same faults
  --json      print the report as JSON on stdout (progress stays on stderr)
  --svid-ttl  SVID lifetime in seconds for the run (renewed at half of it); default 20
  --faults    only these fault kinds, comma-separated (none: load only); default all`

/** `90s`, `3m`, `300` → milliseconds. */
function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(s|m)?$/.exec(text)
  if (m === null) throw new Error(`--duration: expected seconds (300, 90s) or minutes (3m), got ${JSON.stringify(text)}`)
  return Number(m[1]) * (m[2] === 'm' ? 60_000 : 1000)
}

/** mulberry32: a small seeded PRNG; the scheduler draws only from it, so a seed replays the same faults at the same offsets. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const started = Date.now()
/** Ctrl-C or SIGTERM: the faults stop, the load stops, the mesh is torn down, the report says so. */
let interrupted = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (!interrupted) progress(`${signal}: ending the run after the current fault, then tearing down`)
    interrupted = true
  })
}
const progress = (message: string): void => void process.stderr.write(`[chaos ${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s] ${message}\n`)
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const alive = (pid: number): boolean => existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ')

const SINK_PORT = 9090
const TRANSFER_BYTES = 1024 * 1024
const CHUNK_BYTES = 8 * 1024
const CHUNK_GAP_MS = 50
const RECOVERY_LIMIT_MS = 60_000

// ---- the run's state --------------------------------------------------------------

const workDir = mkdtempSync(join(tmpdir(), 'akm-chaos-'))
const sinkLog = (uid: string): string => join(workDir, `sink-${uid}.jsonl`)
const handles = new Map<string, Netns>()
const ns = (name: string): Netns => {
  let h = handles.get(name)
  if (h === undefined) handles.set(name, (h = openNetns(netnsPath(name))))
  return h
}

let markers = 0
const meshPrefix = `AKC${process.pid}M-`
const plainPrefix = `AKC${process.pid}P-`
/** Every mesh marker with its flow: the capture is searched for the prefix, and only when it is found, for which. */
const meshFlows = new Map<string, { from: string; to: string; start: number; end: number }>()
function marker(from: PodConfig, to: PodConfig): string {
  const mesh = from.mesh && to.mesh
  // The trailing x ends the number: marker 1x is no prefix of marker 12x.
  const m = `${mesh ? meshPrefix : plainPrefix}${(markers += 1)}x`
  if (mesh) meshFlows.set(m, { from: podUid(from), to: podUid(to), start: Date.now(), end: Number.POSITIVE_INFINITY })
  return m
}
const flowEnded = (m: string): void => {
  const f = meshFlows.get(m)
  if (f !== undefined) f.end = Date.now()
}

/** A window of time in which a fault was active (injected until its traffic recovered). */
interface Window {
  kind: string
  from: number
  to: number
}
const faultWindows: Window[] = []
/** Pods whose capture rules were gone, and when: their flows are outside the mesh meanwhile, by construction. */
const captureLoss: Array<{ uid: string; from: number; to: number }> = []
const inCaptureLoss = (uids: readonly string[], start: number, end: number): boolean =>
  captureLoss.some((w) => uids.includes(w.uid) && start <= w.to + 1000 && end >= w.from)
const duringFault = (start: number, end: number): boolean => faultWindows.some((w) => start <= w.to && end >= w.from)

const violations = {
  deniedReachedApp: [] as string[],
  meshPlaintextOnLink: [] as string[],
  silentTruncation: [] as string[],
  wrongAnswer: [] as string[],
  stalled: [] as string[],
  liveFlowNotCut: [] as string[],
  notRecovered: [] as string[],
  unexpectedExit: [] as string[],
  uncaughtException: [] as string[],
  baseline: [] as string[],
}
const note = (list: string[], what: string): void => {
  list.push(what)
  progress(`VIOLATION: ${what}`)
}

const traffic = {
  connections: { sent: 0, reached: 0, failedVisibly: 0, failedOutsideFaults: 0, skipped: 0, errors: new Map<string, number>() },
  transfers: { started: 0, completed: 0, failedVisibly: 0, bytes: 0, errors: new Map<string, number>() },
  denied: { sent: 0, refused: 0, timedOut: 0 },
  exposedDuringCaptureLoss: 0,
}
const countError = (map: Map<string, number>, error: string): void => {
  const key = error.replace(/\d+(\.\d+)*/g, 'N').slice(0, 160)
  map.set(key, (map.get(key) ?? 0) + 1)
}

// ---- the mesh's processes ---------------------------------------------------------

interface Proc {
  name: string
  pid: number
  exited?: Promise<void>
}
const pidOf = (name: string): Proc => ({ name, pid: (JSON.parse(readFileSync(join(state.pids(), `${name}.pid`), 'utf8')) as { pid: number }).pid })
const fromStarted = (p: DemoProcess): Proc => ({ name: p.name, pid: p.pid, exited: p.exited })

let configFile = ''
let config: MeshConfig
const supervised = new Map<string, Proc>()
/** Processes stopped on purpose: the watchdog leaves them alone. */
const expectedDown = new Set<string>()

const startControlPlane = async (): Promise<Proc> =>
  fromStarted(await startProcess({ name: 'control-plane', ...tsEntry('control-plane-main.ts', ['--config', configFile]), identify: 'control-plane-main.ts', timeoutMs: 60_000 }))
const startAgent = async (node: string): Promise<Proc> =>
  fromStarted(
    await startProcess({
      name: `agent-${node}`,
      ...tsEntry('node-agent-main.ts', ['--node', node, '--admin-port', String(ADMIN_PORT)]),
      netns: netnsName.node(node),
      identify: `node-agent-main.ts --node ${node}`,
      timeoutMs: 60_000,
    }),
  )
const restart = (name: string): Promise<Proc> => (name === 'control-plane' ? startControlPlane() : startAgent(name.replace(/^agent-/, '')))

async function kill(name: string, signal: NodeJS.Signals): Promise<void> {
  const p = supervised.get(name)!
  expectedDown.add(name)
  await stopPid(p.pid, p.exited, 5000, signal)
  forgetProcess(name)
}
async function revive(name: string): Promise<void> {
  supervised.set(name, await restart(name))
  expectedDown.delete(name)
}

/** Every second: a supervised process that died without being told to is a violation, and is restarted. */
function watchdog(): () => void {
  let busy = false
  const timer = setInterval(() => {
    if (busy) return
    for (const [name, p] of supervised) {
      if (expectedDown.has(name) || alive(p.pid)) continue
      busy = true
      note(violations.unexpectedExit, `${name} (pid ${p.pid}) exited on its own; last log lines:\n${tail(join(state.logs(), `${name}.log`))}`)
      expectedDown.add(name)
      revive(name)
        .catch((err: unknown) => progress(`restarting ${name} failed: ${(err as Error).message}`))
        .finally(() => (busy = false))
      return
    }
  }, 1000)
  return () => clearInterval(timer)
}
const tail = (file: string): string => {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-8).join('\n')
  } catch {
    return '(no log)'
  }
}

/** GET on a node proxy's admin server, from inside the node's namespace. */
async function adminGet(node: string, path: string): Promise<unknown> {
  const socket = await ns(netnsName.node(node)).connect({ host: '127.0.0.1', port: ADMIN_PORT, signal: AbortSignal.timeout(3000) })
  const text = await readAll(socket, `GET ${path} HTTP/1.0\r\n\r\n`, 3000)
  return JSON.parse(text.split('\r\n\r\n').slice(1).join('\r\n\r\n'))
}
function readAll(socket: Socket, request: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    const timer = setTimeout(() => socket.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    socket.on('end', () => {
      clearTimeout(timer)
      resolve(Buffer.concat(chunks).toString('utf8'))
    })
    socket.end(request)
  })
}

// ---- traffic ----------------------------------------------------------------------

interface Pair {
  from: PodConfig
  to: PodConfig
  /** The answer must come from this app (a service may pick any of its pods). */
  app: RegExp
  address?: string
  port?: number
}

let stopping = false
const pod = (name: string): PodConfig => {
  const p = config.pods.find((x) => `${x.namespace}/${x.name}` === name)
  if (p === undefined) throw new Error(`chaos needs pod ${name} of the example's mesh.yaml`)
  return p
}
const pair = (from: string, to: string): Pair => ({ from: pod(from), to: pod(to), app: new RegExp(`^${to}$`) })

/** One HTTP request through the mesh (or around it, for the pod outside it): reached with the right app and marker, or failed visibly. */
async function request(p: Pair, timeoutMs: number): Promise<{ ok: boolean; error?: string }> {
  const m = marker(p.from, p.to)
  const t0 = Date.now()
  const r = await requestFromPod(ns(netnsName.pod(p.from)), p.address ?? p.to.ip, p.port ?? p.to.port, m, timeoutMs)
  flowEnded(m)
  if (!r.ok) return { ok: false, error: r.error ?? 'unknown error' }
  if (!p.app.test(r.answer?.app ?? '') || r.answer?.marker !== m) {
    const exposed = inCaptureLoss([podUid(p.from), podUid(p.to)], t0, Date.now())
    if (!exposed) note(violations.wrongAnswer, `${p.from.name} → ${p.to.name}: answered ${JSON.stringify(r.answer)} to marker ${m}`)
    return { ok: false, error: 'wrong answer' }
  }
  return { ok: true }
}

/** New connections at a fixed rate, each one request with a marker, at most 32 at once. */
function connectionLoad(pairs: readonly Pair[], everyMs: number): Promise<void> {
  let inflight = 0
  let next = 0
  const all = new Set<Promise<void>>()
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      if (stopping) {
        clearInterval(timer)
        void Promise.all([...all]).then(() => resolve())
        return
      }
      if (inflight >= 32) {
        traffic.connections.skipped += 1
        return
      }
      const p = pairs[next++ % pairs.length]!
      inflight += 1
      const t0 = Date.now()
      const one = request(p, 5000).then((r) => {
        inflight -= 1
        const c = traffic.connections
        c.sent += 1
        if (r.ok) c.reached += 1
        else {
          c.failedVisibly += 1
          countError(c.errors, r.error!)
          if (!duringFault(t0, Date.now())) c.failedOutsideFaults += 1
        }
      })
      all.add(one)
      void one.then(() => all.delete(one))
    }, everyMs)
  })
}

type TransferOutcome = { result: 'ok' | 'visible' | 'silent' | 'stalled'; detail: string; received: number }

/**
 * A long transfer to a pod's sink: `size` bytes in chunks (each starting with
 * the marker, so the capture can look for it), paced, echoed back; the echo
 * is hashed. A clean end with fewer or other bytes is a silent truncation.
 */
async function transfer(p: Pair, size: number, signal?: AbortSignal): Promise<TransferOutcome & { marker: string }> {
  const m = marker(p.from, p.to)
  const outcome = await transferOnce(ns(netnsName.pod(p.from)), p.to.ip, SINK_PORT, m, size, signal)
  flowEnded(m)
  return { ...outcome, marker: m }
}

async function transferOnce(netns: Netns, host: string, port: number, m: string, size: number, signal?: AbortSignal): Promise<TransferOutcome> {
  let socket: Socket
  try {
    socket = await netns.connect({ host, port, signal: AbortSignal.timeout(5000) })
  } catch (err) {
    return { result: 'visible', detail: (err as Error).message, received: 0 }
  }
  const sent = createHash('sha256')
  const got = createHash('sha256')
  let total = 0
  let received = 0
  let lastProgress = Date.now()
  let finished = false
  return new Promise<TransferOutcome>((resolve) => {
    const stall = setInterval(() => {
      if (Date.now() - lastProgress > 20_000) finish('stalled', 'no byte moved for 20 s')
    }, 1000)
    const finish = (result: TransferOutcome['result'], detail: string): void => {
      if (finished) return
      finished = true
      clearInterval(stall)
      signal?.removeEventListener('abort', onAbort)
      socket.destroy()
      resolve({ result, detail, received })
    }
    const onAbort = (): void => finish('visible', 'aborted by the run')
    signal?.addEventListener('abort', onAbort)
    socket.on('data', (c: Buffer) => {
      got.update(c)
      received += c.length
      lastProgress = Date.now()
    })
    socket.on('error', (err) => finish('visible', (err as NodeJS.ErrnoException).code ?? err.message))
    socket.on('end', () => {
      // An end while the client still sends is visible to it: its next write
      // fails (EPIPE or a reset). After its last byte, a clean end with
      // fewer or other bytes than it sent is not: that is the silent truncation.
      if (total < size) finish('visible', `the peer ended the connection after ${received} bytes while the client was still sending`)
      else if (received === total && got.digest('hex') === sent.digest('hex')) finish('ok', '')
      else finish('silent', `clean end after ${received} of ${total} bytes, the client done sending`)
    })
    void (async () => {
      const write = async (chunk: Buffer): Promise<void> => {
        sent.update(chunk)
        total += chunk.length
        if (!socket.write(chunk)) await new Promise<void>((resolve) => socket.once('drain', resolve).once('close', resolve))
      }
      await write(Buffer.from(`CHAOS ${m}\n`))
      for (let i = 0; total < size && !finished; i += 1) {
        const head = Buffer.from(`${m}:${i}:`)
        await write(Buffer.concat([head, randomBytes(Math.min(CHUNK_BYTES, size - total) - head.length)]))
        lastProgress = Date.now()
        await sleep(CHUNK_GAP_MS)
      }
      if (!finished) socket.end()
    })().catch((err: unknown) => finish('visible', (err as Error).message))
  })
}

/** Long transfers one after another over `pairs`. */
async function transferLoad(pairs: readonly Pair[], offset: number): Promise<void> {
  for (let i = offset; !stopping; i += 1) {
    const p = pairs[i % pairs.length]!
    traffic.transfers.started += 1
    const t0 = Date.now()
    const o = await transfer(p, TRANSFER_BYTES)
    recordTransfer(p, o, t0)
    if (o.result !== 'ok') await sleep(250)
  }
}
function recordTransfer(p: Pair, o: TransferOutcome & { marker: string }, t0: number): void {
  const t = traffic.transfers
  t.bytes += o.received
  if (o.result === 'ok') return void (t.completed += 1)
  if (o.result === 'visible') {
    t.failedVisibly += 1
    return countError(t.errors, o.detail)
  }
  const what = `${p.from.name} → ${p.to.name} ${o.marker}: ${o.result}: ${o.detail}`
  if (inCaptureLoss([podUid(p.from), podUid(p.to)], t0, Date.now())) traffic.exposedDuringCaptureLoss += 1
  else note(o.result === 'silent' ? violations.silentTruncation : violations.stalled, what)
}

/** Markers of flows policy denies: none may show in a sink's log. */
const deniedMarkers = new Map<string, { from: string; to: string; start: number }>()

/** A flow policy must deny: it sends a marker and bytes to the sink; any byte back means it reached the app. */
async function deniedProbe(p: Pair): Promise<void> {
  const m = marker(p.from, p.to)
  const start = Date.now()
  deniedMarkers.set(m, { from: podUid(p.from), to: podUid(p.to), start })
  traffic.denied.sent += 1
  const o = await transferOnce(ns(netnsName.pod(p.from)), p.to.ip, SINK_PORT, m, 4096, AbortSignal.timeout(3000))
  flowEnded(m)
  if (o.received > 0 && !inCaptureLoss([podUid(p.from), podUid(p.to)], start, Date.now())) {
    note(violations.deniedReachedApp, `${p.from.name} → ${p.to.name} (denied by policy) got ${o.received} bytes back from the app (${m})`)
  } else if (o.detail === 'aborted by the run') traffic.denied.timedOut += 1
  else traffic.denied.refused += 1
}
async function deniedLoad(pairs: readonly Pair[], everyMs: number): Promise<void> {
  for (let i = 0; !stopping; i += 1) {
    await Promise.all([deniedProbe(pairs[i % pairs.length]!), sleep(everyMs)])
  }
}

// ---- recovery -----------------------------------------------------------------------

let probePairs: Pair[] = []
/** Polls the probe pairs (every path across and within the nodes) until all succeed in one round; the time it took, or undefined after 60 s. */
async function recovered(kind: string, since: number): Promise<number | undefined> {
  for (;;) {
    const results = await Promise.all(probePairs.map((p) => request(p, 2000)))
    if (results.every((r) => r.ok)) return Date.now() - since
    if (Date.now() - since > RECOVERY_LIMIT_MS) {
      note(violations.notRecovered, `${kind}: traffic not back after ${RECOVERY_LIMIT_MS / 1000} s: ${results.map((r, i) => (r.ok ? '' : `${probePairs[i]!.from.name} → ${probePairs[i]!.to.name}: ${r.error}`)).filter(Boolean).join('; ')}`)
      return undefined
    }
    await sleep(200)
  }
}

// ---- faults -----------------------------------------------------------------------

interface FaultResult {
  kind: string
  at: number
  detail: string
  recoveryMs?: number
}
type Fault = (rand: () => number) => Promise<{ detail: string; since: number }>

const pick = <T>(rand: () => number, list: readonly T[]): T => list[Math.floor(rand() * list.length)]!
const holdFor = (rand: () => number, min: number, max: number): number => Math.round(min + rand() * (max - min))
/** Applies a fault, holds it, and clears it even when applying failed halfway. */
async function during(holdMs: number, apply: () => Promise<void>, clear: () => Promise<void>): Promise<void> {
  try {
    await apply()
    await sleep(holdMs)
  } finally {
    await clear()
  }
}

const nftRules = async (netns: string): Promise<string> =>
  (await run('ip', ['netns', 'exec', netns, 'nft', 'list', 'ruleset'])).replace(/ # handle \d+/g, '').replace(/counter packets \d+ bytes \d+/g, 'counter')

let basePolicies: unknown[] = []
let added = 0

function faults(): Record<string, Fault> {
  const [a, b] = config.nodes as [NodeConfig, NodeConfig]
  const linkEnds: Array<[string, string]> = [
    [netnsName.node(a.name), linkInterface(b)],
    [netnsName.node(b.name), linkInterface(a)],
  ]
  // This machine's kernel has no sch_netem: loss is nftables' random drop on
  // the link (both ways, in the forward path of each node), delay a token
  // bucket (tbf) that queues what exceeds its rate.
  const loss = async (percent: number): Promise<void> => {
    for (const [n, dev] of linkEnds) {
      await run('ip', ['netns', 'exec', n, 'nft', '-f', '-'], `table inet akm_chaos {\n chain forward {\n type filter hook forward priority -300; policy accept;\n oifname "${dev}" numgen random mod 100 < ${percent} drop\n }\n chain output {\n type filter hook output priority -300; policy accept;\n oifname "${dev}" numgen random mod 100 < ${percent} drop\n }\n}\n`)
    }
  }
  const clearLoss = async (): Promise<void> => {
    for (const [n] of linkEnds) await run('ip', ['netns', 'exec', n, 'nft', 'delete', 'table', 'inet', 'akm_chaos']).catch(() => undefined)
  }
  const slow = async (kbit: number): Promise<void> => {
    for (const [n, dev] of linkEnds) await run('ip', ['netns', 'exec', n, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${kbit}kbit`, 'burst', '16kb', 'latency', '500ms'])
  }
  const clearSlow = async (): Promise<void> => {
    for (const [n, dev] of linkEnds) await run('ip', ['netns', 'exec', n, 'tc', 'qdisc', 'del', 'dev', dev, 'root']).catch(() => undefined)
  }
  const meshPods = config.pods.filter((p) => p.mesh)
  return {
    'agent-kill': async (rand) => {
      const node = pick(rand, config.nodes).name
      const hold = holdFor(rand, 300, 3000)
      await kill(`agent-${node}`, 'SIGKILL')
      await sleep(hold)
      await revive(`agent-${node}`)
      return { detail: `agent of ${node} SIGKILLed, down ${hold} ms, restarted`, since: Date.now() }
    },
    'control-plane-kill': async (rand) => {
      const hold = holdFor(rand, 300, 3000)
      await kill('control-plane', 'SIGKILL')
      await sleep(hold)
      await revive('control-plane')
      const t0 = Date.now()
      for (;;) {
        const health = (await callControlPlane(state.socket(), 'GET', '/v1/healthz')) as { watchers: number }
        if (health.watchers >= config.nodes.length) break
        if (Date.now() - t0 > RECOVERY_LIMIT_MS) {
          note(violations.notRecovered, `control-plane-kill: only ${health.watchers} of ${config.nodes.length} agents watch the restarted control plane`)
          break
        }
        await sleep(100)
      }
      return { detail: `control plane SIGKILLed, down ${hold} ms, restarted; agents watching again after ${Date.now() - t0} ms`, since: t0 }
    },
    'pod-add-remove': async (rand) => {
      const template = pick(rand, meshPods)
      const node = config.nodes.find((n) => n.name === template.node)!
      const client = probePairs.find((p) => p.to === template && p.from.node !== node.name && p.from.mesh)?.from
      added += 1
      const base = node.podCidr.split('/')[0]!.split('.').slice(0, 3).join('.')
      const late: PodConfig = { ...template, name: `${template.name}-c${added}`, ip: `${base}.${200 + (added % 50)}` }
      const uid = podUid(late)
      const label = `${late.namespace}/${late.name}`
      await createPod(late, node)
      const app = await startProcess({
        name: `app-${uid}`,
        command: process.execPath,
        args: [join(EXAMPLE_DIR, 'app', 'echo.mjs'), '--name', label, '--port', String(late.port)],
        netns: netnsName.pod(late),
        identify: `echo.mjs --name ${label}`,
      })
      const known = client ? ((await adminGet(client.node, '/config_dump')) as { registry: { workloads: number } }).registry.workloads : 0
      const t0 = Date.now()
      await callControlPlane(state.socket(), 'PUT', `/v1/pods/${uid}`, { ...late, netns: netnsPath(netnsName.pod(late)) })
      const enrolled = async (present: boolean): Promise<boolean> => {
        const dump = (await adminGet(node.name, '/config_dump')) as { workloads: Array<{ uid: string; state: string }> }
        const w = dump.workloads.find((x) => x.uid === uid)
        return present ? w?.state === 'ready' : w === undefined
      }
      const until = async (what: string, check: () => Promise<boolean>): Promise<void> => {
        for (const t = Date.now(); !(await check().catch(() => false)); await sleep(100)) {
          if (Date.now() - t > RECOVERY_LIMIT_MS) throw new Error(`waited ${RECOVERY_LIMIT_MS} ms for ${what}`)
        }
      }
      let detail = `${label} (${late.ip}) added on ${node.name}`
      try {
        await until(`${label} to be enrolled`, () => enrolled(true))
        if (client !== undefined) {
          await until(`${client.node} to learn of ${label}`, async () => ((await adminGet(client.node, '/config_dump')) as { registry: { workloads: number } }).registry.workloads > known)
          const r = await request({ from: client, to: late, app: new RegExp(`^${label}$`) }, 5000)
          detail += `; ${client.name} → it: ${r.ok ? 'reached' : r.error}`
          if (!r.ok) note(violations.notRecovered, `pod-add-remove: ${client.name} → ${label} after enrollment: ${r.error}`)
        }
        detail += ` in ${Date.now() - t0} ms`
      } finally {
        await callControlPlane(state.socket(), 'DELETE', `/v1/pods/${uid}`)
        await until(`${label} to be released`, () => enrolled(false)).catch((err: unknown) => note(violations.notRecovered, `pod-add-remove: ${(err as Error).message}`))
        await stopPid(app.pid, app.exited)
        forgetProcess(app.name)
        await handles.get(netnsName.pod(late))?.close()
        handles.delete(netnsName.pod(late))
        await deleteNamespace(netnsName.pod(late))
      }
      return { detail: `${detail}, removed`, since: Date.now() }
    },
    'policy-flip': async (rand) => {
      // A live long transfer frontend → api when the deny lands: it must be cut (visibly), and nothing sent after reaches the app.
      const p = pair('shop/frontend', 'shop/api')
      const liveStop = new AbortController()
      const live = transfer(p, 64 * TRANSFER_BYTES, liveStop.signal)
      await sleep(holdFor(rand, 500, 1500))
      const deny = { name: 'chaos-deny-frontend', namespace: 'shop', scope: 'workload', selector: { app: 'api' }, action: 'DENY', rules: [{ serviceAccounts: ['frontend'] }] }
      const t0 = Date.now()
      await callControlPlane(state.socket(), 'PUT', '/v1/policies', [...basePolicies, deny])
      let effectiveAt: number | undefined
      while (effectiveAt === undefined && Date.now() - t0 < 10_000) {
        if (!(await request(p, 2000)).ok) effectiveAt = Date.now()
      }
      const cut = await Promise.race([live, sleep(5000).then(() => undefined)])
      if (cut === undefined || cut.result === 'ok') {
        note(violations.liveFlowNotCut, `policy-flip: the live frontend → api transfer ${cut === undefined ? 'still ran 5 s after the deny took effect' : 'completed under the deny'}`)
      } else if (cut.result !== 'visible') note(violations.silentTruncation, `policy-flip: the live frontend → api transfer ended ${cut.result}: ${cut.detail}`)
      // Denied flows during the flip: to the sink, they must not reach it.
      for (let i = 0; i < 3; i += 1) await deniedProbe(p)
      const hold = holdFor(rand, 500, 2000)
      await sleep(hold)
      await callControlPlane(state.socket(), 'PUT', '/v1/policies', basePolicies)
      liveStop.abort()
      await live
      return { detail: `frontend → api denied (effective after ${effectiveAt === undefined ? 'never' : `${effectiveAt - t0} ms`}; live transfer ${cut?.result ?? 'not cut'}${cut?.detail ? `: ${cut.detail}` : ''}), allowed again after ${hold} ms`, since: Date.now() }
    },
    'ca-rotation': async () => {
      const ttl = Number(flags['svid-ttl'])
      const rotate = (step: string): Promise<unknown> => callControlPlane(state.socket(), 'POST', '/v1/ca/rotate', { step })
      await rotate('add-root')
      await sleep(2000)
      await rotate('switch')
      // Every SVID renews onto the new CA within its lifetime; then the old root can go.
      await sleep((ttl + 2) * 1000)
      await rotate('remove-old-root')
      return { detail: `trust bundle rotated: root added, new CA signing, old root removed after ${ttl + 2} s`, since: Date.now() }
    },
    'link-loss': async (rand) => {
      const percent = holdFor(rand, 5, 40)
      const hold = holdFor(rand, 1000, 5000)
      await during(hold, () => loss(percent), clearLoss)
      return { detail: `${percent}% of packets dropped both ways for ${hold} ms`, since: Date.now() }
    },
    'link-slow': async (rand) => {
      const kbit = holdFor(rand, 500, 4000)
      const hold = holdFor(rand, 1000, 5000)
      await during(hold, () => slow(kbit), clearSlow)
      return { detail: `link limited to ${kbit} kbit/s (up to 500 ms queueing delay) both ways for ${hold} ms`, since: Date.now() }
    },
    'link-flap': async (rand) => {
      const [n, dev] = pick(rand, linkEnds)
      const hold = holdFor(rand, 200, 4000)
      // The routes through the link go with it (IPv4 drops them on link down): put back as they were.
      const routes = (await run('ip', ['-n', n, 'route', 'show', 'dev', dev])).split('\n').filter((l) => l.trim() !== '' && !l.includes('proto kernel'))
      await during(
        hold,
        () => run('ip', ['-n', n, 'link', 'set', 'dev', dev, 'down']).then(() => undefined),
        async () => {
          await run('ip', ['-n', n, 'link', 'set', 'dev', dev, 'up'])
          for (const r of routes) await run('ip', ['-n', n, 'route', 'replace', ...r.trim().split(/\s+/), 'dev', dev])
        },
      )
      return { detail: `${dev} in ${n} down for ${hold} ms`, since: Date.now() }
    },
    'capture-flush': (rand) => captureFault(rand, 'flush'),
    'capture-table-delete': (rand) => captureFault(rand, 'table'),
  }
}

const baselineRules = new Map<string, string>()

/**
 * Removes a pod's capture behind its agent's back (the whole nft ruleset, or
 * one table), then waits for the agent to put it back (drift repair); when
 * it does not within 5 s, restarts the agent, which reconciles. Until the
 * rules are back the pod is outside the mesh: its flows are counted apart.
 */
async function captureFault(rand: () => number, how: 'flush' | 'table'): Promise<{ detail: string; since: number }> {
  const target = pick(rand, config.pods.filter((p) => p.mesh))
  const netns = netnsName.pod(target)
  const window = { uid: podUid(target), from: Date.now(), to: Number.POSITIVE_INFINITY }
  captureLoss.push(window)
  let what = 'nft ruleset flushed'
  if (how === 'flush') await run('ip', ['netns', 'exec', netns, 'nft', 'flush', 'ruleset'])
  else {
    const tables = (await run('ip', ['netns', 'exec', netns, 'nft', 'list', 'tables'])).split('\n').filter((l) => l.startsWith('table '))
    const table = pick(rand, tables).replace(/^table /, '').split(' ')
    await run('ip', ['netns', 'exec', netns, 'nft', 'delete', 'table', ...table])
    what = `nft table ${table.join(' ')} deleted`
  }
  const back = async (): Promise<boolean> => (await nftRules(netns)) === baselineRules.get(netns)
  let repairedBy = 'the agent (drift repair)'
  for (const t = Date.now(); !(await back()); await sleep(100)) {
    if (Date.now() - t > 5000) {
      repairedBy = 'an agent restart'
      await kill(`agent-${target.node}`, 'SIGTERM')
      await revive(`agent-${target.node}`)
      if (!(await back())) note(violations.notRecovered, `capture of ${target.name} not back after an agent restart`)
      break
    }
  }
  window.to = Date.now()
  return { detail: `${target.namespace}/${target.name}: ${what}; back in ${window.to - window.from} ms by ${repairedBy}`, since: window.from }
}

/** Faults one at a time: each round a seeded permutation of every kind, with a seeded gap before each. */
async function schedule(rand: () => number, durationMs: number): Promise<FaultResult[]> {
  const all = faults()
  const only = flags.faults?.split(',').filter((k) => k !== 'none')
  for (const k of only ?? []) if (!(k in all)) throw new Error(`--faults: no fault ${k}; expected some of ${Object.keys(all).join(', ')}, or none`)
  const kinds = only === undefined ? all : Object.fromEntries(only.map((k) => [k, all[k]!]))
  const results: FaultResult[] = []
  const end = Date.now() + durationMs
  while (Date.now() < end && !interrupted) {
    const round = Object.keys(kinds)
    while (round.length === 0 && Date.now() < end && !interrupted) await sleep(500)
    for (let i = round.length - 1; i > 0; i -= 1) {
      const j = Math.floor(rand() * (i + 1))
      ;[round[i], round[j]] = [round[j]!, round[i]!]
    }
    for (const kind of round) {
      await sleep(holdFor(rand, 1000, 4000))
      if (Date.now() >= end || interrupted) break
      const at = Date.now()
      progress(`fault: ${kind}`)
      const window: Window = { kind, from: at, to: Number.POSITIVE_INFINITY }
      faultWindows.push(window)
      try {
        const { detail, since } = await kinds[kind]!(rand)
        const recoveryMs = await recovered(kind, since)
        window.to = Date.now()
        progress(`  ${detail}; traffic back in ${recoveryMs ?? '(never)'} ms`)
        results.push({ kind, at: at - started, detail, ...(recoveryMs === undefined ? {} : { recoveryMs }) })
      } catch (err) {
        window.to = Date.now()
        note(violations.notRecovered, `${kind}: the fault itself failed: ${(err as Error).message}`)
        results.push({ kind, at: at - started, detail: `failed: ${(err as Error).message}` })
        for (const name of [...expectedDown]) await revive(name).catch(() => undefined)
      }
    }
  }
  return results
}

// ---- capture on the link ----------------------------------------------------------------

/** tcpdump on the link between the two nodes, in files of 32 MB analysed at the end. */
async function startLinkCapture(): Promise<Capture & { files(): string[] }> {
  const [a, b] = config.nodes as [NodeConfig, NodeConfig]
  const capture = await captureLink(a, b, join(workDir, 'link.pcap'), { rotateMb: 32 })
  const files = (): string[] =>
    readdirSync(workDir).filter((f) => f.startsWith('link.pcap')).sort((x, y) => Number(x.slice(9) || 0) - Number(y.slice(9) || 0)).map((f) => join(workDir, f))
  return { ...capture, files }
}

/** The mesh markers written whole in a capture file's bytes (a marker is short: in one segment, but for a rare split). */
function markersIn(file: string): Set<string> {
  const data = readFileSync(file)
  const found = new Set<string>()
  for (let i = data.indexOf(meshPrefix); i !== -1; i = data.indexOf(meshPrefix, i + 1)) {
    const m = /^\d+x/.exec(data.subarray(i + meshPrefix.length, i + meshPrefix.length + 12).toString('latin1'))
    if (m !== null && meshFlows.has(`${meshPrefix}${m[0]}`)) found.add(`${meshPrefix}${m[0]}`)
  }
  return found
}

function checkCapture(files: readonly string[]): { packets: number; tlsRecords: number; nonTlsBytesOn15008: number; meshMarkers: number; plaintextControlSeen: boolean } {
  let packets = 0
  let tlsRecords = 0
  let nonTls = 0
  let plainSeen = false
  for (const file of files) {
    const found = analyseCapture(file, [meshPrefix, plainPrefix])
    packets += found.packets
    tlsRecords += found.tlsRecords.applicationData
    nonTls += found.nonTlsBytesOn15008
    if (found.markersFound.includes(plainPrefix)) plainSeen = true
    if (found.markersFound.includes(meshPrefix)) {
      // Rare: which flows? Those of pods whose capture was removed at the time are outside the mesh by construction.
      for (const m of markersIn(file)) {
        const f = meshFlows.get(m)!
        if (inCaptureLoss([f.from, f.to], f.start, f.end)) traffic.exposedDuringCaptureLoss += 1
        else note(violations.meshPlaintextOnLink, `${m} (${f.from} → ${f.to}) crossed the link in plaintext`)
      }
    }
    rmSync(file, { force: true })
  }
  return { packets, tlsRecords, nonTlsBytesOn15008: nonTls, meshMarkers: meshFlows.size, plaintextControlSeen: plainSeen }
}

// ---- baseline -----------------------------------------------------------------------------

const normalise = (text: string): string => text.split('\n').filter((l) => !l.startsWith('#')).map((l) => l.replace(/\[\d+:\d+\]/g, '')).join('\n')
const hostRules = async (): Promise<string> => normalise(`${await run('nft', ['list', 'ruleset'])}\n${await run('iptables-save', []).catch(() => '')}`)
const fds = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length
/** Processes carrying this run's state directory in their environment (every process the mesh started does). */
function meshProcesses(): string[] {
  const found: string[] = []
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid && Number(p) !== process.ppid)) {
    try {
      if (!readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`AMBIENTKIT_LOCAL_STATE_DIR=${STATE_DIR}`)) continue
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim()
      // tsx's esbuild services (the runner's, and those a TypeScript entry keeps while it compiles) come and go on their own.
      if (/esbuild --service/.test(cmdline)) continue
      found.push(`${pid}: ${cmdline}`)
    } catch {
      // It ended while we looked.
    }
  }
  return found
}

interface Resources {
  fds: Record<string, number>
  rssMiB: Record<string, number>
}
function resources(): Resources {
  const r: Resources = { fds: {}, rssMiB: {} }
  for (const [name, p] of supervised) {
    r.fds[name] = fds(p.pid)
    r.rssMiB[name] = Math.round(rssKiB(p.pid) / 1024)
  }
  return r
}

// ---- report ---------------------------------------------------------------------------------

interface ChaosReport {
  seed: number
  durationMs: number
  svidTtlSeconds: number
  faults: Array<{ kind: string; injected: number; recovered: number; p50Ms?: number; p99Ms?: number; maxMs?: number }>
  faultLog: FaultResult[]
  svidRotations: number
  traffic: {
    connections: Omit<typeof traffic.connections, 'errors'> & { errors: Record<string, number> }
    transfers: Omit<typeof traffic.transfers, 'errors'> & { errors: Record<string, number> }
    denied: typeof traffic.denied
    exposedDuringCaptureLoss: number
  }
  capture: ReturnType<typeof checkCapture>
  invariants: Array<{ name: string; violations: number; examples: string[] }>
  resources: { baseline: Resources; end: Resources; runnerFds: { before: number; after: number } }
  ok: boolean
}

function summary(results: readonly FaultResult[]): ChaosReport['faults'] {
  const kinds = [...new Set(results.map((r) => r.kind))].sort()
  return kinds.map((kind) => {
    const of = results.filter((r) => r.kind === kind)
    const times = of.flatMap((r) => (r.recoveryMs === undefined ? [] : [r.recoveryMs])).sort((x, y) => x - y)
    return { kind, injected: of.length, recovered: times.length, ...(times.length ? { p50Ms: quantile(times, 0.5), p99Ms: quantile(times, 0.99), maxMs: times[times.length - 1]! } : {}) }
  })
}

const INVARIANTS: Array<[keyof typeof violations, string]> = [
  ['deniedReachedApp', 'no byte of a denied flow reaches the app'],
  ['liveFlowNotCut', 'a live flow is cut when policy denies it'],
  ['meshPlaintextOnLink', 'no mesh payload crosses between the nodes in plaintext'],
  ['silentTruncation', 'no allowed transfer truncated or corrupted silently'],
  ['stalled', 'no allowed transfer hangs without an error'],
  ['wrongAnswer', 'every answer comes from the right app with the right marker'],
  ['notRecovered', 'traffic recovers after every fault (within 60 s)'],
  ['unexpectedExit', 'no process of the mesh exits unless killed by the run'],
  ['uncaughtException', 'no uncaught exception in any process'],
  ['baseline', 'descriptors, memory, namespaces, rules and processes back to baseline'],
]

function formatReport(r: ChaosReport): string {
  const ms = (v: number | undefined): string => (v === undefined ? '-' : `${v}`)
  const c = r.traffic.connections
  const t = r.traffic.transfers
  return [
    `chaos run: seed ${r.seed}, ${(r.durationMs / 1000).toFixed(0)} s of faults, SVID TTL ${r.svidTtlSeconds} s (${r.svidRotations} SVID rotations)`,
    '',
    formatTable([['fault', 'injected', 'recovered', 'p50 ms', 'p99 ms', 'max ms'], ...r.faults.map((f) => [f.kind, `${f.injected}`, `${f.recovered}`, ms(f.p50Ms), ms(f.p99Ms), ms(f.maxMs)])]),
    '',
    formatTable([
      ['traffic', 'count', 'ok', 'failed visibly', 'notes'],
      ['new connections', `${c.sent}`, `${c.reached}`, `${c.failedVisibly}`, `${c.failedOutsideFaults} failed outside fault windows; ${c.skipped} skipped (32 in flight)`],
      ['long transfers (1 MiB, sha-256)', `${t.started}`, `${t.completed}`, `${t.failedVisibly}`, `${(t.bytes / 1024 / 1024).toFixed(0)} MiB echoed`],
      ['denied by policy', `${r.traffic.denied.sent}`, `${r.traffic.denied.refused} refused`, '-', `${r.traffic.denied.timedOut} unanswered (3 s)`],
      ['exposed while capture was removed', `${r.traffic.exposedDuringCaptureLoss}`, '-', '-', 'flows of a pod whose rules a fault deleted'],
    ]),
    '',
    formatTable([['invariant', 'violations'], ...r.invariants.map((i) => [i.name, `${i.violations}`])]),
    ...r.invariants.filter((i) => i.violations > 0).flatMap((i) => ['', `${i.name}:`, ...i.examples.map((e) => `  ${e}`)]),
    '',
    `capture between the nodes: ${r.capture.packets} packets, ${r.capture.tlsRecords} TLS application records, ${r.capture.nonTlsBytesOn15008} non-TLS bytes on 15008, ${r.capture.meshMarkers} mesh markers searched; plaintext control markers ${r.capture.plaintextControlSeen ? 'seen (the search works)' : 'NOT seen'}`,
    formatTable([
      ['process', 'fds at start', 'fds at end', 'RSS MiB at start', 'RSS MiB at end'],
      ...Object.keys(r.resources.baseline.fds).map((n) => [n, `${r.resources.baseline.fds[n]}`, `${r.resources.end.fds[n] ?? '-'}`, `${r.resources.baseline.rssMiB[n]}`, `${r.resources.end.rssMiB[n] ?? '-'}`]),
    ]),
    '',
    `Visible failures of connections: ${JSON.stringify(c.errors)}`,
    `Visible failures of transfers: ${JSON.stringify(t.errors)}`,
    `${r.ok ? 'OK' : 'FAILED'}: ${r.invariants.reduce((s, i) => s + i.violations, 0)} invariant violations. Replay: sudo npm run chaos -- --seed ${r.seed} --duration ${Math.round(r.durationMs / 1000)}s`,
  ].join('\n')
}

// ---- main -------------------------------------------------------------------------------------

const demoBin = join(EXAMPLE_DIR, 'bin', 'demo.mjs')
const demo = (args: string[]): Promise<void> =>
  new Promise((resolve, reject) =>
    execFile(process.execPath, [demoBin, ...args, '--config', configFile], { maxBuffer: 16 * 1024 * 1024 }, (err, _stdout, stderr) =>
      err === null ? resolve() : reject(new Error(`demo ${args.join(' ')} failed:\n${stderr.trim().split('\n').slice(-15).join('\n')}`)),
    ),
  )

async function main(): Promise<number> {
  if (flags.help) {
    console.log(USAGE)
    return 0
  }
  const durationMs = parseDuration(flags.duration!)
  const seed = flags.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(flags.seed)
  if (!Number.isInteger(seed)) throw new Error(`--seed: expected an integer, got ${flags.seed}`)
  const ttl = Number(flags['svid-ttl'])
  if (!Number.isInteger(ttl) || ttl < 10) throw new Error(`--svid-ttl: expected whole seconds, at least 10, got ${flags['svid-ttl']}`)
  if ((await demoNamespaces()).length > 0) throw new Error(`namespaces ${PREFIX}-* exist already: another run is active, or left them (sudo AMBIENTKIT_LOCAL_PREFIX=${PREFIX} npm run demo -- --down)`)
  progress(`seed ${seed}; faults for ${durationMs / 1000} s; mesh ${PREFIX}-*, state in ${STATE_DIR}, work files in ${workDir}`)

  configFile = join(workDir, 'mesh.yaml')
  writeFileSync(configFile, readFileSync(flags.config!, 'utf8').replace(/^svidTtlSeconds: \d+/m, `svidTtlSeconds: ${ttl}`))
  config = loadMeshConfig(configFile)
  basePolicies = config.policies as unknown as unknown[]
  const hostBefore = await hostRules()
  const runnerFdsBefore = fds(process.pid)

  let stopWatchdog = (): void => undefined
  let capture: Awaited<ReturnType<typeof startLinkCapture>> | undefined
  let report: ChaosReport | undefined
  try {
    progress('building the mesh (demo --up)')
    await demo(['--up'])
    supervised.set('control-plane', pidOf('control-plane'))
    for (const n of config.nodes) supervised.set(`agent-${n.name}`, pidOf(`agent-${n.name}`))
    progress('starting a sink (TCP echo) in every pod')
    for (const p of config.pods) {
      await startProcess({ name: `sink-${podUid(p)}`, command: process.execPath, args: [join(import.meta.dirname, 'sink.mjs'), '--port', String(SINK_PORT), '--log', sinkLog(podUid(p))], netns: netnsName.pod(p), identify: 'chaos/sink.mjs' })
    }
    for (const p of config.pods) if (p.mesh) baselineRules.set(netnsName.pod(p), await nftRules(netnsName.pod(p)))
    const namespacesBefore = (await demoNamespaces()).sort()
    const processesBefore = meshProcesses().length

    probePairs = [pair('shop/frontend', 'shop/api'), pair('shop/api', 'shop/frontend'), pair('billing/payments', 'billing/ledger'), pair('billing/ledger', 'billing/payments'), pair('shop/frontend', 'billing/payments'), pair('legacy/monitor', 'billing/ledger')]
    const vip = config.services.find((s) => s.name === 'api')
    const connPairs: Pair[] = [
      ...probePairs,
      pair('shop/api', 'legacy/monitor'),
      pair('billing/payments', 'legacy/monitor'),
      ...(vip ? [{ ...pair('shop/frontend', 'shop/api'), app: /^shop\/api(-c\d+)?$/, address: vip.vip, port: Number(Object.keys(vip.ports)[0]) }] : []),
    ]
    const transferPairs = [pair('shop/frontend', 'shop/api'), pair('billing/ledger', 'billing/payments'), pair('billing/payments', 'billing/ledger'), pair('shop/api', 'shop/frontend')]
    const deniedPairs = [pair('billing/payments', 'shop/api'), pair('shop/frontend', 'billing/ledger'), pair('legacy/monitor', 'shop/api'), pair('legacy/monitor', 'billing/ledger')]

    capture = await startLinkCapture()
    stopWatchdog = watchdog()
    progress('steady load: 10 new connections/s, 2 long transfers at a time, 2 denied flows/s; warming up 5 s')
    const load = [connectionLoad(connPairs, 100), transferLoad(transferPairs, 0), transferLoad(transferPairs, 1), deniedLoad(deniedPairs, 500)]
    await sleep(5000)
    const baseline = resources()
    const faultLog = await schedule(prng(seed), durationMs)
    progress('faults over; load stops')
    stopping = true
    await Promise.all(load)
    stopWatchdog()
    await capture.stop()
    progress('load stopped; searching the capture for markers')
    const captured = checkCapture(capture.files())

    // Denied flows must never have reached a sink.
    for (const p of config.pods) {
      const lines = existsSync(sinkLog(podUid(p))) ? readFileSync(sinkLog(podUid(p)), 'utf8').split('\n').filter(Boolean) : []
      for (const line of lines) {
        const entry = JSON.parse(line) as { marker: string | null; bytes: number }
        const denied = entry.marker === null ? undefined : deniedMarkers.get(entry.marker)
        if (denied === undefined || entry.bytes === 0) continue
        if (inCaptureLoss([denied.from, denied.to], denied.start, denied.start + 3000)) traffic.exposedDuringCaptureLoss += 1
        else note(violations.deniedReachedApp, `${entry.marker} (${denied.from} → ${denied.to}, denied) delivered ${entry.bytes} bytes to the app`)
      }
    }

    progress('settling 5 s, then checking resources against the baseline')
    await sleep(5000)
    const end = resources()
    for (const name of Object.keys(baseline.fds)) {
      if (end.fds[name]! > baseline.fds[name]! + 32) note(violations.baseline, `${name}: ${end.fds[name]} descriptors at the end, ${baseline.fds[name]} at the start`)
      if (end.rssMiB[name]! > Math.max(2 * baseline.rssMiB[name]!, baseline.rssMiB[name]! + 128)) note(violations.baseline, `${name}: ${end.rssMiB[name]} MiB resident at the end, ${baseline.rssMiB[name]} at the start`)
    }
    for (const [netns, rules] of baselineRules) if ((await nftRules(netns)) !== rules) note(violations.baseline, `${netns}: capture rules differ from the start`)
    const namespacesAfter = (await demoNamespaces()).sort()
    if (namespacesAfter.join() !== namespacesBefore.join()) note(violations.baseline, `namespaces at the end ${namespacesAfter.join(', ')}; at the start ${namespacesBefore.join(', ')}`)
    const processesAfter = meshProcesses()
    if (processesAfter.length !== processesBefore) note(violations.baseline, `${processesAfter.length} mesh processes at the end, ${processesBefore} at the start:\n${processesAfter.join('\n')}`)
    for (const file of readdirSync(state.logs()).filter((f) => f.endsWith('.log'))) {
      const text = readFileSync(join(state.logs(), file), 'utf8')
      if (/^Node\.js v\d+|uncaughtException|unhandledRejection|"level":60/m.test(text)) note(violations.uncaughtException, `${file}:\n${text.split('\n').filter((l) => /Error|Node\.js v|"level":60/.test(l)).slice(0, 6).join('\n')}`)
    }
    const svidRotations = config.nodes.reduce((n, node) => n + tailCount(join(state.logs(), `agent-${node.name}.log`), '"msg":"rotated SVID"'), 0)

    report = {
      seed,
      durationMs,
      svidTtlSeconds: ttl,
      faults: summary(faultLog),
      faultLog,
      svidRotations,
      traffic: {
        connections: { ...traffic.connections, errors: Object.fromEntries(traffic.connections.errors) },
        transfers: { ...traffic.transfers, errors: Object.fromEntries(traffic.transfers.errors) },
        denied: traffic.denied,
        exposedDuringCaptureLoss: traffic.exposedDuringCaptureLoss,
      },
      capture: captured,
      invariants: [],
      resources: { baseline, end, runnerFds: { before: runnerFdsBefore, after: 0 } },
      ok: false,
    }
  } finally {
    stopping = true
    stopWatchdog()
    await capture?.stop().catch(() => undefined)
    for (const h of handles.values()) await h.close()
    handles.clear()
    progress('tearing down (demo --down)')
    await demo(['--down']).catch((err: unknown) => note(violations.baseline, (err as Error).message))
  }
  if (report === undefined) return 1
  // After the teardown: nothing of the run may be left on the machine.
  const left = await demoNamespaces()
  if (left.length > 0) note(violations.baseline, `namespaces left after the teardown: ${left.join(', ')}`)
  const stray = meshProcesses()
  if (stray.length > 0) note(violations.baseline, `processes left after the teardown:\n${stray.join('\n')}`)
  if ((await hostRules()) !== hostBefore) note(violations.baseline, 'the host namespace\'s nft or iptables rules changed')
  const runnerFdsAfter = fds(process.pid)
  if (runnerFdsAfter > runnerFdsBefore + 2) note(violations.baseline, `the chaos runner holds ${runnerFdsAfter} descriptors, ${runnerFdsBefore} before the run`)
  report.resources.runnerFds.after = runnerFdsAfter
  report.invariants = INVARIANTS.map(([key, name]) => ({ name, violations: violations[key].length, examples: violations[key].slice(0, 5) }))
  report.ok = !interrupted && report.invariants.every((i) => i.violations === 0) && report.capture.plaintextControlSeen
  if (flags.json) console.log(JSON.stringify(report, null, 2))
  else console.log(`\n${formatReport(report)}`)
  rmSync(workDir, { recursive: true, force: true })
  return report.ok ? 0 : 1
}

const tailCount = (file: string, needle: string): number => {
  try {
    return readFileSync(file, 'utf8').split('\n').filter((l) => l.includes(needle)).length
  } catch {
    return 0
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`chaos failed: ${(err as Error).stack ?? (err as Error).message}`)
    process.exit(1)
  },
)
