// One node of the local mesh: node agent (enrollment) + node proxy, fed by the control plane.
// Run inside the node's network namespace: ip netns exec akm-n-node-1 node --import tsx src/node-agent-main.ts --node node-1
import { appendFileSync } from 'node:fs'
import { createJsonLogger, createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
import { createIdentityManager } from '@ambientkit/identity'
import { createNodeAgent } from '@ambientkit/agent'
import { createNodeProxy } from '@ambientkit/proxy'
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import { createNodeIdentitySource, followControlPlane } from './client'
import { ADMIN_PORT, STATE_DIR, state } from './paths'
import { createLogSink, onShutdown, options, signalParent } from './process-util'

/** How long connections under way may take to finish after SIGTERM: within the 5 s the demo (stopPid) waits before SIGKILL. */
const DRAIN_DEADLINE_MS = 4000

const args = options(['node', 'state-dir', 'admin-port'])
const dir = args['state-dir'] ?? STATE_DIR
const nodeName = args.node
if (nodeName === undefined) {
  console.error('usage: node-agent-main.ts --node <name> [--state-dir dir] [--admin-port 15021]')
  process.exit(2)
}
const log = createLogSink()
const logger = createJsonLogger({ write: log.write, bindings: { node: nodeName } })
const socketPath = state.socket(dir)
const accessLogFile = state.accessLog(nodeName, dir)

try {
  const registry = createWorkloadRegistry()
  const policies = createPolicyStore()
  const follower = followControlPlane(socketPath, nodeName, registry, policies, (err) => logger.warn({ err }, 'control plane watch'))
  await follower.synced
  const trustDomain = follower.state()!.trustDomain
  const identities = createIdentityManager({ source: createNodeIdentitySource(dir, nodeName, trustDomain), ttlSeconds: follower.state()!.svidTtlSeconds, logger })
  const nodeProxy = createNodeProxy({
    nodeName,
    registry,
    identities,
    policies,
    // Read once at start: a change of these settings in mesh.yaml needs an agent restart.
    workloadDefaults: follower.state()!.proxy,
    // Readiness and metrics on the node's addresses, as a kubelet and Prometheus reach them; /config_dump to the node's loopback only.
    admin: { host: '::', port: Number(args['admin-port'] ?? ADMIN_PORT) },
    // One JSON line per connection: what the demo's report is built from.
    accessLog: (entry) => appendFileSync(accessLogFile, `${JSON.stringify({ time: new Date().toISOString(), node: nodeName, ...entry })}\n`),
    logger,
  })
  // Lines a full log disk refused: counted on /config_dump, next to the agent's own disk failures.
  nodeProxy.register({ name: 'log', configDump: () => ({ lostLines: log.lostLines }) })
  await nodeProxy.start()
  // The Workload API for this node's pods: they share this machine's filesystem, so the socket is one path per node.
  const workloadApiSocket = state.workloadApiSocket(nodeName, dir)
  mkdirSync(dirname(workloadApiSocket), { recursive: true, mode: 0o755 })
  const agent = createNodeAgent({
    nodeProxy,
    podSource: follower.podSource,
    capture: follower.state()!.capture,
    stateFile: state.agentState(nodeName, dir),
    workloadApi: { socketPath: workloadApiSocket, identities },
    logger,
  })
  const report = await agent.start()
  onShutdown(async () => {
    // Fail closed: listeners go, capture rules stay, so captured pods cannot
    // bypass the mesh until an agent is back and reconciles. Connections
    // under way finish (HBONE peers get GOAWAY) rather than being reset.
    logger.info({ deadlineMs: DRAIN_DEADLINE_MS }, 'stopping: draining connections')
    await follower.close()
    await nodeProxy.drain({ deadline: DRAIN_DEADLINE_MS })
    await agent.close()
    await identities.close()
  })
  signalParent({ ready: report.failed.length === 0, node: nodeName, admin: nodeProxy.adminAddress(), workloadApi: workloadApiSocket, ...report })
} catch (err) {
  logger.fatal({ err }, 'node agent failed to start')
  signalParent({ ready: false, error: (err as Error).message })
  process.exit(1)
}
