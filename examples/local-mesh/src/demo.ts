// The local mesh demo: builds a cluster of network namespaces, runs the
// control plane and one node agent per node, sends traffic, proves it is
// encrypted, and reports. Started by bin/demo.mjs (which checks root and tools).
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { workloadIdentity, type Workload } from '@ambientkit/core'
import { defaultHboneDataPath, nativeHboneThreads } from '@ambientkit/proxy'
import { openNetns, type Netns } from '@ambientkit/redirect'
import { readFileSync } from 'node:fs'
import { SpiffeId } from '@ambientkit/identity'
import { createIstioCaSource } from '@ambientkit/ca'
import { callControlPlane, createNodeIdentitySource } from './client'
import { loadMeshConfig, podUid, podWorkload, type MeshConfig, type NodeConfig, type PodConfig } from './config'
import type { MeshState } from './control-plane'
import { ADMIN_PORT, DEFAULT_CONFIG, EXAMPLE_DIR, PREFIX, ROOT_DIR, STATE_DIR, controlPlaneId, netnsName, netnsPath, state } from './paths'
import { analyseCapture, captureLink, type Capture } from './pcap'
import { forgetProcess, startProcess, stopPid, stopRecordedProcesses, strayProcesses, tsEntry, type DemoProcess } from './processes'
import { correlate, formatReport, readAccessLog, type DemoReport, type SentRequest } from './report'
import { createNode, createPod, deleteNamespace, demoNamespaces, linkNodes, namespacePids, run } from './topology'
import { requestFromPod } from './traffic'

const { values: flags } = parseArgs({
  options: {
    keep: { type: 'boolean', default: false },
    down: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    apply: { type: 'boolean', default: false },
    up: { type: 'boolean', default: false },
    upgrade: { type: 'string' },
    config: { type: 'string', default: DEFAULT_CONFIG },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
})

const USAGE = `usage: sudo npm run demo -- [--keep | --up | --down | --apply | --upgrade <node>] [--json] [--config mesh.yaml]
  (no flag)  build the mesh, send traffic, print the report, tear everything down
  --keep     leave the mesh running afterwards and print a cheat sheet
  --up       build the mesh and leave it running, without the scenario
  --down     remove everything a demo created (namespaces ${PREFIX}-*, processes, ${STATE_DIR})
  --apply    send the policies of mesh.yaml to the running mesh (after --keep)
  --upgrade  replace a node's running agent with a new process (the code as it is now) without
             dropping traffic: the new one joins its listeners, then the old one drains and exits
  --json     print the report as JSON on stdout (progress stays on stderr)
  --config   the mesh file (default examples/local-mesh/mesh.yaml)`

/** Aborted by Ctrl-C or SIGTERM: every step checks it before it starts. */
const interrupted = new AbortController()
const step = (): void => interrupted.signal.throwIfAborted()

const started = Date.now()
function progress(message: string): void {
  process.stderr.write(`[demo ${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${message}\n`)
}

// ---- teardown ---------------------------------------------------------------

/** Removes every process, namespace and file of a demo, found by pid files and by prefix. */
async function teardown(): Promise<{ processes: string[]; namespaces: string[] }> {
  const processes = await stopRecordedProcesses()
  const namespaces = await demoNamespaces()
  // Whatever still runs inside our namespaces (an app, tcpdump, an agent
  // whose pid file was lost) is ours too.
  for (const ns of namespaces) {
    for (const pid of await namespacePids(ns)) {
      await stopPid(pid, undefined, 2000)
      processes.push(`pid ${pid} in ${ns}`)
    }
  }
  for (const ns of namespaces) await deleteNamespace(ns)
  for (const pid of strayProcesses()) {
    await stopPid(pid, undefined, 2000)
    processes.push(`pid ${pid}`)
  }
  rmSync(STATE_DIR, { recursive: true, force: true })
  return { processes, namespaces }
}

async function leftovers(): Promise<string[]> {
  const found = (await demoNamespaces()).map((ns) => `namespace ${ns}`)
  if (existsSync(state.socket())) found.push(`control plane socket ${state.socket()}`)
  return found
}

// ---- the mesh ---------------------------------------------------------------

interface Mesh {
  config: MeshConfig
  configFile: string
  controlPlane: DemoProcess
  agents: Map<string, DemoProcess>
  apps: Map<string, DemoProcess>
  netns: Map<string, Netns>
  closeHandles(): Promise<void>
}

function startApp(pod: PodConfig): Promise<DemoProcess> {
  const label = `${pod.namespace}/${pod.name}`
  return startProcess({
    name: `app-${podUid(pod)}`,
    command: process.execPath,
    args: [join(EXAMPLE_DIR, 'app', 'echo.mjs'), '--name', label, '--port', String(pod.port)],
    netns: netnsName.pod(pod),
    identify: `echo.mjs --name ${label}`,
    signal: interrupted.signal,
  })
}

function startControlPlane(configFile: string): Promise<DemoProcess> {
  return startProcess({ name: 'control-plane', ...tsEntry('control-plane-main.ts', ['--config', configFile]), identify: 'control-plane-main.ts', timeoutMs: 60_000, signal: interrupted.signal })
}

function startAgent(node: NodeConfig): Promise<DemoProcess> {
  const entry = tsEntry('node-agent-main.ts', ['--node', node.name, '--admin-port', String(ADMIN_PORT)])
  return startProcess({ name: `agent-${node.name}`, ...entry, netns: netnsName.node(node.name), identify: `node-agent-main.ts --node ${node.name}`, timeoutMs: 60_000, signal: interrupted.signal })
}

async function startMesh(config: MeshConfig, configFile: string): Promise<Mesh> {
  mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 })
  const nodeByName = new Map(config.nodes.map((n) => [n.name, n]))
  progress(`creating ${config.nodes.length} nodes and ${config.pods.length} pods (network namespaces ${PREFIX}-n-*, ${PREFIX}-p-*)`)
  for (const node of config.nodes) {
    step()
    await createNode(node)
  }
  for (const [i, a] of config.nodes.entries()) for (const b of config.nodes.slice(i + 1)) await linkNodes(a, b)
  for (const pod of config.pods) {
    step()
    await createPod(pod, nodeByName.get(pod.node)!)
  }
  step()
  progress('starting an echo app in every pod')
  const apps = new Map<string, DemoProcess>()
  await Promise.all(config.pods.map(async (pod) => apps.set(podUid(pod), await startApp(pod))))
  step()
  progress(`starting the control plane (CA in ${state.caDir()}, API on ${state.socket()})`)
  const controlPlane = await startControlPlane(configFile)
  const dataPath = config.proxy.dataPath ?? defaultHboneDataPath()
  const threads = dataPath === 'native' ? ` with ${nativeHboneThreads()} data-path threads per agent` : ''
  progress(`starting ${config.nodes.length} node agents (enrollment + node proxy, HBONE on the ${dataPath} data path${threads}), one per node namespace`)
  const agents = new Map<string, DemoProcess>()
  await Promise.all(config.nodes.map(async (node) => agents.set(node.name, await startAgent(node))))
  for (const [node, agent] of agents) progress(`  ${node}: ${(agent.ready.enrolled as string[]).length} pods enrolled`)
  const netns = new Map<string, Netns>()
  return {
    config,
    configFile,
    controlPlane,
    agents,
    apps,
    netns,
    async closeHandles() {
      await Promise.all([...netns.values()].map((n) => n.close()))
      netns.clear()
    },
  }
}

function handle(mesh: Mesh, name: string): Netns {
  let h = mesh.netns.get(name)
  if (h === undefined) {
    h = openNetns(netnsPath(name))
    mesh.netns.set(name, h)
  }
  return h
}

/** GET on a node proxy's admin server from inside namespace `from`, to `host`. */
async function adminRequest(mesh: Mesh, from: string, host: string, path: string): Promise<{ status: number; body: string }> {
  const socket = await handle(mesh, from).connect({ host, port: ADMIN_PORT, signal: AbortSignal.timeout(5000) })
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', reject)
    socket.on('end', () => {
      const [head = '', ...body] = Buffer.concat(chunks).toString('utf8').split('\r\n\r\n')
      resolve({ status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0), body: body.join('\r\n\r\n') })
    })
    socket.end(`GET ${path} HTTP/1.0\r\n\r\n`)
  })
}

/** GET on a node proxy's admin server, from inside the node's namespace. */
async function adminGet(mesh: Mesh, node: string, path: string): Promise<string> {
  return (await adminRequest(mesh, netnsName.node(node), '127.0.0.1', path)).body
}

/**
 * The admin server seen from a pod, at its node's address: readiness and
 * metrics answer (the kubelet and Prometheus need them), `/config_dump`
 * does not (it shows every workload, identity and policy of the node).
 */
async function adminFromPod(mesh: Mesh): Promise<NonNullable<DemoReport['adminFromPod']>> {
  const pod = mesh.config.pods[0]!
  const node = mesh.config.nodes.find((n) => n.name === pod.node)!
  progress(`asking ${node.name}'s admin server for its readiness, metrics and configuration from pod ${pod.namespace}/${pod.name}`)
  const status = async (path: string): Promise<number> => (await adminRequest(mesh, netnsName.pod(pod), node.gateway, path)).status
  return { pod: `${pod.namespace}/${pod.name}`, node: `${node.name} (${node.gateway}:${ADMIN_PORT})`, ready: await status('/healthz/ready'), metrics: await status('/metrics'), configDump: await status('/config_dump') }
}

/** Waits until a node proxy reports `uid` ready (or gone, with `present: false`). The enrollment is another process's: polling is the only view. */
async function waitForEnrollment(mesh: Mesh, node: string, uid: string, present: boolean): Promise<number> {
  const t0 = Date.now()
  await waitFor(`${uid} to be ${present ? 'enrolled' : 'released'} on ${node}`, async () => {
    const dump = JSON.parse(await adminGet(mesh, node, '/config_dump')) as { workloads: Array<{ uid: string; state: string }> }
    const w = dump.workloads.find((x) => x.uid === uid)
    return present ? w?.state === 'ready' : w === undefined
  })
  return Date.now() - t0
}

/** How many workloads a node proxy's registry holds (from /config_dump). */
async function registrySize(mesh: Mesh, node: string): Promise<number> {
  return (JSON.parse(await adminGet(mesh, node, '/config_dump')) as { registry: { workloads: number } }).registry.workloads
}

/** Polls `check` every 50 ms until it holds; throws naming `what` after `limitMs`. */
async function waitFor(what: string, check: () => Promise<boolean>, limitMs = 15_000): Promise<void> {
  const t0 = Date.now()
  while (!(await check())) {
    if (Date.now() - t0 > limitMs) throw new Error(`waited ${limitMs} ms for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

// ---- traffic ----------------------------------------------------------------

let markerCount = 0
const marker = (): string => `AKM-PLAINTEXT-MARKER-${process.pid}-${(markerCount += 1).toString().padStart(3, '0')}`

async function send(
  mesh: Mesh,
  phase: SentRequest['phase'],
  from: PodConfig,
  to: { name: string; address: string; port: number; target?: PodConfig; mesh: boolean },
  { attempts = 1, timeoutMs = 5000 }: { attempts?: number; timeoutMs?: number } = {},
): Promise<SentRequest> {
  step()
  const m = marker()
  const fromNode = from.node
  const crossesLink = to.target === undefined || to.target.node !== fromNode
  let startedAt = Date.now()
  let result = await requestFromPod(handle(mesh, netnsName.pod(from)), to.address, to.port, m, timeoutMs)
  let tries = 1
  for (; !result.ok && tries < attempts; tries += 1) {
    startedAt = Date.now()
    result = await requestFromPod(handle(mesh, netnsName.pod(from)), to.address, to.port, m, timeoutMs)
  }
  const endedAt = Date.now()
  return {
    phase,
    from: podWorkload(from, mesh.config.trustDomain),
    to: to.name,
    ...(to.target ? { target: podWorkload(to.target, mesh.config.trustDomain) } : {}),
    address: to.address,
    port: to.port,
    marker: m,
    plaintextExpected: crossesLink && (!from.mesh || !to.mesh),
    sent: result,
    attempts: tries,
    startedAt,
    endedAt,
  }
}

const podTarget = (pod: PodConfig): { name: string; address: string; port: number; target: PodConfig; mesh: boolean } => ({
  name: `${pod.namespace}/${pod.name}`,
  address: pod.ip,
  port: pod.port,
  target: pod,
  mesh: pod.mesh,
})

// ---- capture ----------------------------------------------------------------

function startCapture(config: MeshConfig): Promise<Capture> {
  const [a, b] = config.nodes
  if (a === undefined || b === undefined) throw new Error('the capture needs two nodes in mesh.yaml')
  return captureLink(a, b, state.capture())
}

// ---- the scenario -----------------------------------------------------------

async function runScenario(mesh: Mesh): Promise<DemoReport> {
  const { config } = mesh
  const sent: SentRequest[] = []
  progress('capturing packets on the link between the nodes (tcpdump)')
  const capture = await startCapture(config)
  let captureStopped = false
  try {
    progress(`sending a request from every pod to every other pod and service (${config.pods.length * (config.pods.length - 1)} + services)`)
    for (const from of config.pods) {
      for (const to of config.pods) if (to !== from) sent.push(await send(mesh, 'matrix', from, podTarget(to)))
      if (!from.mesh) continue
      for (const service of config.services) {
        const [port] = Object.keys(service.ports).map(Number)
        sent.push(await send(mesh, 'matrix', from, { name: `${service.name}.${service.namespace} (VIP)`, address: service.vip, port: port!, mesh: true }))
      }
    }

    const addRemove = await addAndRemove(mesh, sent)
    const restart = await restartAgent(mesh, sent)
    const controlPlaneRestart = await killControlPlane(mesh)
    const identity = await identityPlane(mesh)
    const admin = await adminFromPod(mesh)

    await capture.stop()
    captureStopped = true
    progress('reading the access logs and the capture')
    const snapshot = (await callControlPlane(state.socket(), 'GET', '/v1/snapshot')) as MeshState
    const allWorkloads = [...snapshot.workloads, ...sent.flatMap((s) => (s.target ? [s.target] : []))]
    // A proxy writes a connection's entry once both of its sides are closed,
    // which can be a moment after the client saw the answer: read again
    // until every answered request has its entries (3 s at most).
    let flows = correlate(sent, config.nodes.flatMap((n) => readAccessLog(state.accessLog(n.name))), allWorkloads)
    for (let waited = 0; waited < 3000 && flows.some((f) => f.result === 'reached' && f.toMesh && !f.seenBy.includes('destination')); waited += 100) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      flows = correlate(sent, config.nodes.flatMap((n) => readAccessLog(state.accessLog(n.name))), allWorkloads)
    }
    const meshMarkers = flows.filter((f) => !f.plaintextExpected).map((f) => f.marker)
    const plainMarkers = flows.filter((f) => f.plaintextExpected && f.result === 'reached').map((f) => f.marker)
    const analysis = analyseCapture(state.capture(), [...meshMarkers, ...plainMarkers])
    const seen = new Set(analysis.markersFound)
    const captureReport = {
      ...analysis,
      link: capture.link,
      meshMarkers: meshMarkers.length,
      meshMarkersSeen: meshMarkers.filter((m) => seen.has(m)),
      plaintextMarkers: plainMarkers.length,
      plaintextMarkersSeen: plainMarkers.filter((m) => seen.has(m)).length,
    }
    const matrix = flows.filter((f) => f.phase === 'matrix')
    const down = flows.filter((f) => f.phase === 'agent-down')
    const back = flows.filter((f) => f.phase === 'agent-restarted')
    const checks = [
      { check: 'traffic between mesh pods went through HBONE', ok: matrix.filter((f) => f.result === 'reached' && f.fromMesh && f.toMesh).every((f) => f.protocol === 'HBONE'), detail: 'every reached mesh-to-mesh request has an HBONE access-log entry' },
      { check: 'denied requests name the policy', ok: matrix.filter((f) => f.result === 'denied').every((f) => f.policy !== undefined || f.decision !== undefined), detail: `${matrix.filter((f) => f.result === 'denied').length} denied` },
      { check: 'no request failed for another reason', ok: matrix.every((f) => f.result !== 'failed'), detail: matrix.filter((f) => f.result === 'failed').map((f) => `${f.from} → ${f.to}: ${f.error}`).join('; ') || 'none failed' },
      { check: 'no mesh plaintext on the wire', ok: captureReport.meshMarkersSeen.length === 0 && analysis.nonTlsBytesOn15008 === 0 && analysis.tlsRecords.applicationData > 0, detail: `${captureReport.meshMarkersSeen.length} of ${meshMarkers.length} markers seen; ${analysis.tlsRecords.applicationData} TLS application-data records on 15008` },
      { check: 'the capture sees plaintext when there is some', ok: plainMarkers.length === 0 || captureReport.plaintextMarkersSeen > 0, detail: `${captureReport.plaintextMarkersSeen} of ${plainMarkers.length} non-mesh markers seen` },
      ...(addRemove ? [{ check: 'a pod added and removed while traffic ran', ok: addRemove.background.reached === addRemove.background.sent && flows.some((f) => f.phase === 'add-remove' && f.result === 'reached' && f.protocol === 'HBONE'), detail: `${addRemove.background.reached}/${addRemove.background.sent} background requests reached${addRemove.background.errors.length === 0 ? '' : ` (failed: ${addRemove.background.errors.join('; ')})`}` }] : []),
      ...(controlPlaneRestart ? [{
        check: 'control plane killed: agents keep serving on their last state and reconnect',
        ok: controlPlaneRestart.agentsAlive && controlPlaneRestart.reconnectedInMs !== undefined && controlPlaneRestart.background.sent > 0 && controlPlaneRestart.background.reached === controlPlaneRestart.background.sent,
        detail: `agents ${controlPlaneRestart.agentsAlive ? 'alive' : 'dead'}; ${controlPlaneRestart.background.reached}/${controlPlaneRestart.background.sent} requests reached${controlPlaneRestart.background.errors.length === 0 ? '' : ` (failed: ${controlPlaneRestart.background.errors.join('; ')})`}; reconnected ${controlPlaneRestart.reconnectedInMs === undefined ? 'never' : `in ${controlPlaneRestart.reconnectedInMs} ms`}`,
      }] : []),
      ...(identity ? [
        { check: 'the CA refuses a node the identity of a pod on another node', ok: identity.impersonation.refused && identity.impersonation.answer.includes('request impersonation authentication failure'), detail: `${identity.impersonation.node} asked for ${identity.impersonation.asked}: ${identity.impersonation.answer}` },
        { check: 'the CA refuses an unauthenticated caller', ok: identity.unauthenticated.refused && identity.unauthenticated.answer.includes('request authenticate failure'), detail: identity.unauthenticated.answer },
        {
          check: 'apps get exactly their own SVID over the Workload API, others none',
          ok: identity.workloadApi.every((w) => (w.expected === undefined ? w.got.id === undefined : w.got.id === w.expected)) && identity.workloadApi.some((w) => w.got.id !== undefined),
          detail: identity.workloadApi.map((w) => `${w.pod} via ${w.socketOf}: ${w.got.id ?? w.got.error}`).join('; '),
        },
      ] : []),
      {
        check: 'from a pod, the node admin server answers readiness and metrics, not /config_dump',
        ok: admin.ready === 200 && admin.metrics === 200 && admin.configDump === 403,
        detail: `${admin.pod} → ${admin.node}: /healthz/ready ${admin.ready}, /metrics ${admin.metrics}, /config_dump ${admin.configDump}`,
      },
      ...(restart ? [
        { check: 'agent down: captured pods fail closed', ok: down.length > 0 && down.every((f) => f.result !== 'reached'), detail: down.map((f) => `${f.from} → ${f.to}: ${f.error ?? f.result}`).join('; ') },
        { check: 'agent restarted: traffic recovers', ok: back.length > 0 && back.every((f) => f.result === 'reached' && f.protocol === 'HBONE'), detail: back.map((f) => `${f.from} → ${f.to}: ${f.result}`).join('; ') },
      ] : []),
    ]
    return {
      mesh: {
        trustDomain: config.trustDomain,
        nodes: config.nodes.map((n) => ({ name: n.name, podCidr: n.podCidr, admin: `${n.gateway}:${ADMIN_PORT} in ${netnsName.node(n.name)} (/config_dump on 127.0.0.1 only)` })),
        pods: config.pods.map((p) => ({ pod: `${p.namespace}/${p.name}`, node: p.node, ip: p.ip, mesh: p.mesh, identity: workloadIdentity({ ...p, trustDomain: config.trustDomain }) })),
        services: snapshot.services.map((s) => ({ host: s.hostname, vip: s.vips.join(', '), endpoints: [...s.endpoints] })),
        policies: snapshot.policies.map((p) => `${p.namespace}/${p.name} (${p.action})`),
      },
      flows,
      ...(addRemove ? { addRemove } : {}),
      ...(restart ? { restart } : {}),
      ...(controlPlaneRestart ? { controlPlaneRestart } : {}),
      ...(identity ? { identity } : {}),
      adminFromPod: admin,
      capture: captureReport,
      checks,
      ok: checks.every((c) => c.ok),
    }
  } finally {
    if (!captureStopped) await capture.stop()
  }
}

/** Requests one after another from `client` to `target` until stopped: how the demo watches traffic while it changes the mesh. */
function backgroundTraffic(mesh: Mesh, client: PodConfig, target: PodConfig): { stats: { from: string; to: string; sent: number; reached: number; errors: string[] }; stop(): Promise<void> } {
  const stats = { from: `${client.namespace}/${client.name}`, to: `${target.namespace}/${target.name}`, sent: 0, reached: 0, errors: [] as string[] }
  let stopped = false
  const loop = (async () => {
    const ns = handle(mesh, netnsName.pod(client))
    while (!stopped) {
      const r = await requestFromPod(ns, target.ip, target.port, 'background')
      stats.sent += 1
      if (r.ok) stats.reached += 1
      else if (stats.errors.length < 3) stats.errors.push(r.error ?? 'unknown error')
    }
  })()
  return {
    stats,
    stop: async () => {
      stopped = true
      await loop
    },
  }
}

/** Adds a pod to the mesh at run time, sends to it, removes it, while a background client keeps sending. */
async function addAndRemove(mesh: Mesh, sent: SentRequest[]): Promise<DemoReport['addRemove']> {
  const { config } = mesh
  const last = config.nodes[config.nodes.length - 1]!
  const template = config.pods.find((p) => p.node === last.name && p.mesh)
  const client = config.pods.find((p) => p.mesh && p.node !== last.name)
  if (template === undefined || client === undefined) return undefined
  const reachable = sent.find((s) => s.phase === 'matrix' && s.from.uid === podUid(client) && s.target?.uid === podUid(template))?.sent.ok === true
  if (!reachable) return undefined
  const used = new Set(config.pods.map((p) => p.ip))
  const base = last.podCidr.split('/')[0]!.split('.').slice(0, 3).join('.')
  const ip = [...Array(50).keys()].map((i) => `${base}.${200 + i}`).find((a) => !used.has(a))!
  const late: PodConfig = { ...template, name: `${template.name}-late`, ip, labels: { ...template.labels } }
  const uid = podUid(late)
  progress(`adding pod ${late.namespace}/${late.name} (${ip}) to the mesh while ${client.namespace}/${client.name} → ${template.namespace}/${template.name} traffic runs`)

  const traffic = backgroundTraffic(mesh, client, template)
  const background = traffic.stats
  try {
    step()
    await createPod(late, last)
    mesh.apps.set(uid, await startApp(late))
    const known = await registrySize(mesh, client.node)
    const t0 = Date.now()
    await callControlPlane(state.socket(), 'PUT', `/v1/pods/${uid}`, { ...late, netns: netnsPath(netnsName.pod(late)) })
    await waitForEnrollment(mesh, last.name, uid, true)
    const enrolledInMs = Date.now() - t0
    // The client's node learns of the pod from the control plane on its own
    // schedule; until it has, it would send to it as to a pod outside the mesh.
    await waitFor(`${client.node} to learn of ${late.namespace}/${late.name}`, async () => (await registrySize(mesh, client.node)) > known)
    progress(`  enrolled in ${enrolledInMs} ms; sending to it`)
    sent.push(await send(mesh, 'add-remove', client, podTarget(late)))
    const t1 = Date.now()
    await callControlPlane(state.socket(), 'DELETE', `/v1/pods/${uid}`)
    await waitForEnrollment(mesh, last.name, uid, false)
    const releasedInMs = Date.now() - t1
    progress(`  removed from the mesh in ${releasedInMs} ms; deleting the pod`)
    const app = mesh.apps.get(uid)!
    await stopPid(app.pid, app.exited)
    forgetProcess(app.name)
    mesh.apps.delete(uid)
    await mesh.netns.get(netnsName.pod(late))?.close()
    mesh.netns.delete(netnsName.pod(late))
    await deleteNamespace(netnsName.pod(late))
    return { pod: `${late.namespace}/${late.name}`, enrolledInMs, releasedInMs, background }
  } finally {
    await traffic.stop()
  }
}

/** Kills a node agent, shows its captured pods fail closed, restarts it, shows recovery. */
async function restartAgent(mesh: Mesh, sent: SentRequest[]): Promise<DemoReport['restart']> {
  const { config } = mesh
  const node = config.nodes[config.nodes.length - 1]!
  const inbound = sent.find((s) => s.phase === 'matrix' && s.sent.ok && s.target?.node === node.name && s.target.protocol === 'HBONE' && s.from.node !== node.name && s.from.protocol === 'HBONE')
  const outbound = sent.find((s) => s.phase === 'matrix' && s.sent.ok && s.from.node === node.name && s.from.protocol === 'HBONE' && s.target?.protocol === 'HBONE')
  const probes = [inbound, outbound].filter((s): s is SentRequest => s !== undefined)
  if (probes.length === 0) return undefined
  const pod = (w: Workload): PodConfig => config.pods.find((p) => podUid(p) === w.uid)!
  const agent = mesh.agents.get(node.name)!
  progress(`killing the node agent of ${node.name} (SIGKILL): its pods stay captured`)
  const t0 = Date.now()
  await stopPid(agent.pid, agent.exited, 5000, 'SIGKILL')
  forgetProcess(agent.name)
  for (const p of probes) sent.push(await send(mesh, 'agent-down', pod(p.from), podTarget(pod(p.target!)), { timeoutMs: 3000 }))
  progress(`restarting it: it reconciles from ${state.agentState(node.name)} and the control plane`)
  const restarted = await startAgent(node)
  mesh.agents.set(node.name, restarted)
  const downFor = `${((Date.now() - t0) / 1000).toFixed(1)} s`
  // A peer node may still hold an HBONE session to the killed proxy that it
  // has not noticed is dead (it drops it after its keepalive timeout, 30 s
  // at most): requests on it hang. Retried for up to 40 s; the report says
  // how many tries it took.
  for (const p of probes) sent.push(await send(mesh, 'agent-restarted', pod(p.from), podTarget(pod(p.target!)), { attempts: 20, timeoutMs: 2000 }))
  const count = (k: string): number => ((restarted.ready[k] as unknown[] | undefined) ?? []).length
  return { node: node.name, downFor, reconciled: { enrolled: count('enrolled'), removed: count('removed'), failed: count('failed') } }
}

/** Kills the control plane with SIGKILL while a client sends across nodes; agents must keep serving and reconnect to the restarted one. */
async function killControlPlane(mesh: Mesh): Promise<DemoReport['controlPlaneRestart']> {
  const { config } = mesh
  const client = config.pods.find((p) => p.mesh && p.node === config.nodes[0]?.name)
  const target = config.pods.find((p) => p.mesh && p.node !== client?.node && p.namespace === client?.namespace)
  if (client === undefined || target === undefined) return undefined
  const probe = await requestFromPod(handle(mesh, netnsName.pod(client)), target.ip, target.port, 'probe')
  if (!probe.ok) return undefined
  progress(`killing the control plane (SIGKILL) while ${client.namespace}/${client.name} → ${target.namespace}/${target.name} traffic runs`)
  const traffic = backgroundTraffic(mesh, client, target)
  const background = traffic.stats
  const t0 = Date.now()
  try {
    await stopPid(mesh.controlPlane.pid, mesh.controlPlane.exited, 5000, 'SIGKILL')
    forgetProcess(mesh.controlPlane.name)
    // Long enough for a crash of the agents (within a second, before the fix) to show.
    await new Promise((resolve) => setTimeout(resolve, 3000))
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0)
        return true
      } catch {
        return false
      }
    }
    const agentsAlive = [...mesh.agents.values()].every((a) => alive(a.pid))
    progress(`  agents ${agentsAlive ? 'still running' : 'DIED'}; restarting the control plane`)
    mesh.controlPlane = await startControlPlane(mesh.configFile)
    const downFor = `${((Date.now() - t0) / 1000).toFixed(1)} s`
    const t1 = Date.now()
    let reconnectedInMs: number | undefined
    try {
      await waitFor('the node agents to watch the restarted control plane', async () =>
        ((await callControlPlane(state.socket(), 'GET', '/v1/healthz')) as { watchers: number }).watchers >= config.nodes.length)
      reconnectedInMs = Date.now() - t1
    } catch {
      reconnectedInMs = undefined
    }
    return { downFor, agentsAlive, reconnectedInMs, background }
  } finally {
    await traffic.stop()
  }
}

/** What the CA service refuses (impersonation, no credential) and what the Workload API gives apps in pods. */
async function identityPlane(mesh: Mesh): Promise<DemoReport['identity']> {
  const { config } = mesh
  const [first, second] = config.nodes
  const elsewhere = config.pods.find((p) => p.mesh && p.node === second?.name)
  if (first === undefined || second === undefined || elsewhere === undefined) return undefined
  const asked = workloadIdentity({ ...elsewhere, trustDomain: config.trustDomain })
  progress(`identity plane: ${first.name}'s credential asks the CA for ${asked} (a pod on ${second.name}); a caller without one asks too`)
  const attempt = async (source: { fetch: (id: SpiffeId, o: { ttlSeconds: number }) => Promise<unknown>; close: () => Promise<void> }): Promise<{ refused: boolean; answer: string }> => {
    try {
      await source.fetch(SpiffeId.parse(asked), { ttlSeconds: 600 })
      return { refused: false, answer: 'issued' }
    } catch (err) {
      return { refused: true, answer: (err as Error).message }
    } finally {
      await source.close()
    }
  }
  const refusals = (): string[] => {
    try {
      return readFileSync(state.caAudit(), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; reason: string }).filter((l) => l.event === 'refused').map((l) => l.reason)
    } catch {
      return []
    }
  }
  // The CA appends its audit line as it answers: read the line the attempt added.
  const refuse = async (source: Parameters<typeof attempt>[0]): Promise<{ refused: boolean; answer: string; auditReason?: string }> => {
    const before = refusals().length
    const outcome = await attempt(source)
    if (outcome.refused) await waitFor('the CA\'s audit line', async () => refusals().length > before, 5000).catch(() => undefined)
    const reason = refusals()[before]
    return { ...outcome, ...(reason === undefined ? {} : { auditReason: reason }) }
  }
  const impersonation = { node: first.name, asked, ...(await refuse(createNodeIdentitySource(STATE_DIR, first.name, config.trustDomain))) }
  const unauthenticated = await refuse(createIstioCaSource({
    address: `unix://${state.caSocket()}`,
    trustDomain: config.trustDomain,
    rootCertificates: () => readFileSync(`${state.caDir()}/ca.pem`, 'utf8'),
    serverIdentity: { spiffeId: controlPlaneId(config.trustDomain) },
  }))
  // Apps in pods ask a node's Workload API for their SVID: their own node's (a mesh pod, a pod outside the mesh) and another node's.
  const meshPod = config.pods.find((p) => p.mesh && p.node === first.name)!
  const outside = config.pods.find((p) => !p.mesh)
  const cases = [
    { pod: meshPod, node: first.name, expected: workloadIdentity({ ...meshPod, trustDomain: config.trustDomain }) },
    ...(outside ? [{ pod: outside, node: outside.node, expected: undefined }] : []),
    { pod: elsewhere, node: first.name, expected: undefined },
  ]
  const workloadApi: NonNullable<DemoReport['identity']>['workloadApi'][number][] = []
  for (const c of cases) {
    step()
    const out = await run('ip', ['netns', 'exec', netnsName.pod(c.pod), 'env', `SPIFFE_ENDPOINT_SOCKET=unix://${state.workloadApiSocket(c.node)}`, `TSX_TSCONFIG_PATH=${join(ROOT_DIR, 'tsconfig.json')}`, process.execPath, '--import', 'tsx', join(EXAMPLE_DIR, 'app', 'fetch-svid.ts')], undefined, EXAMPLE_DIR)
    workloadApi.push({ pod: `${c.pod.namespace}/${c.pod.name}`, socketOf: c.node, ...(c.expected ? { expected: c.expected } : {}), got: JSON.parse(out.trim()) as Record<string, string> })
  }
  return { impersonation, unauthenticated, workloadApi }
}

// ---- upgrade -------------------------------------------------------------------

/**
 * Replaces the running agent of `nodeName` with a new process, as a
 * DaemonSet's rolling update does on one node: the new agent opens its
 * listeners in every enrolled pod next to the old one's (SO_REUSEPORT) and
 * reports ready; then the old one gets SIGTERM, stops accepting and drains.
 * The pid file names the new process from then on; when the new one fails
 * to start, the old one keeps running and stays recorded.
 */
async function upgradeAgent(config: MeshConfig, nodeName: string): Promise<{ old: number; next: number }> {
  const node = config.nodes.find((n) => n.name === nodeName)
  if (node === undefined) throw new Error(`--upgrade ${nodeName}: no such node in ${flags.config} (nodes: ${config.nodes.map((n) => n.name).join(', ')})`)
  const pidFile = join(state.pids(), `agent-${node.name}.pid`)
  const recorded = existsSync(pidFile) ? readFileSync(pidFile, 'utf8') : undefined
  const { pid, identify } = recorded === undefined ? { pid: 0, identify: '' } : (JSON.parse(recorded) as { pid: number; identify: string })
  const cmdline = pid > 0 && existsSync(`/proc/${pid}/cmdline`) ? readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ') : ''
  if (identify === '' || !cmdline.includes(identify)) throw new Error(`--upgrade ${nodeName}: no running agent for that node (start the mesh with --up or --keep first)`)
  progress(`starting a new agent for ${node.name} next to the running one (pid ${pid})`)
  let next: DemoProcess
  try {
    next = await startAgent(node)
  } catch (err) {
    writeFileSync(pidFile, recorded!)
    throw err
  }
  progress(`new agent ready (pid ${next.pid}); SIGTERM to the old one: it stops accepting, drains and exits`)
  await stopPid(pid, undefined, 30_000)
  return { old: pid, next: next.pid }
}

// ---- cheat sheet --------------------------------------------------------------

function cheatSheet(config: MeshConfig): string {
  const pod = config.pods[0]!
  const other = config.pods.find((p) => p.node !== pod.node && p.mesh) ?? config.pods[1]!
  const node = config.nodes[0]!
  return `
The mesh is still running (--keep). Cheat sheet:

  run a command in a pod        sudo ip netns exec ${netnsName.pod(pod)} curl -s http://${other.ip}:${other.port}/
                                (pods: ${config.pods.map((p) => netnsName.pod(p)).join(', ')})
  see a pod's capture rules     sudo ip netns exec ${netnsName.pod(pod)} nft list ruleset
  a node's proxy admin          sudo ip netns exec ${netnsName.node(node.name)} curl -s localhost:${ADMIN_PORT}/config_dump
                                (also /metrics and /healthz/ready; nodes: ${config.nodes.map((n) => netnsName.node(n.name)).join(', ')})
  access logs (JSON lines)      ${state.accessLog('<node>')}
  process logs                  ${state.logs()}/
  the control plane API         sudo curl -s --unix-socket ${state.socket()} http://cp/v1/snapshot
  change policies               edit ${flags.config}, then: sudo npm run demo -- --apply
  upgrade a node's agent        sudo npm run demo -- --upgrade ${node.name}
  tear everything down          sudo npm run demo -- --down
`
}

// ---- main ---------------------------------------------------------------------

async function main(): Promise<number> {
  if (flags.help) {
    console.log(USAGE)
    return 0
  }
  if (flags.down) {
    const { processes, namespaces } = await teardown()
    console.log(`removed ${namespaces.length} namespaces and stopped ${processes.length} processes; ${STATE_DIR} deleted`)
    return 0
  }
  if (flags.upgrade !== undefined) {
    const { old, next } = await upgradeAgent(loadMeshConfig(flags.config!), flags.upgrade)
    console.log(`node ${flags.upgrade}: agent pid ${old} replaced by pid ${next}`)
    return 0
  }
  if (flags.apply) {
    const config = loadMeshConfig(flags.config!)
    const result = (await callControlPlane(state.socket(), 'PUT', '/v1/policies', config.policies)) as { policies: number; revision: number }
    console.log(`applied ${result.policies} policies from ${flags.config} (revision ${result.revision}); node proxies re-evaluate open connections`)
    return 0
  }
  const config = loadMeshConfig(flags.config!)
  const stale = await leftovers()
  if (stale.length > 0) {
    console.error(`A mesh from an earlier run is still there (${stale.slice(0, 3).join(', ')}${stale.length > 3 ? ', ...' : ''}).`)
    console.error('Remove it first: sudo npm run demo -- --down')
    return 1
  }
  let mesh: Mesh | undefined
  let keep = false
  // Ctrl-C stops the run at its next step; the teardown below then runs once,
  // never concurrently with a step still creating things.
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted.signal.aborted) return progress(`${signal}: still tearing down, please wait`)
    progress(`${signal}: stopping, then tearing down`)
    interrupted.abort(new Error(`interrupted by ${signal}`))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    mesh = await startMesh(config, flags.config!)
    if (flags.up) {
      keep = true
      console.error(cheatSheet(config))
      return 0
    }
    const report = await runScenario(mesh)
    if (flags.json) console.log(JSON.stringify(report, null, 2))
    else console.log(`\n${formatReport(report)}`)
    keep = flags.keep === true
    if (keep) console.error(cheatSheet(config))
    return report.ok ? 0 : 1
  } catch (err) {
    if (!interrupted.signal.aborted) console.error(`demo failed: ${(err as Error).message}`)
    return interrupted.signal.aborted ? 130 : 1
  } finally {
    await mesh?.closeHandles()
    if (!keep) {
      progress('tearing down (processes, namespaces, state)')
      await teardown()
    }
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`demo failed: ${(err as Error).message}`)
    process.exit(1)
  },
)

