/**
 * The node agent of the Kubernetes DaemonSet: the pod watcher and registry
 * sync of this example feeding `@ambientkit/agent`'s node agent and `@ambientkit/proxy`'s node proxy.
 *
 *   node dist/main.js --config /etc/ambientkit/mesh.yaml   (--help for the usage)
 */
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import { createJsonLogger, createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
import { createIdentityManager } from '@ambientkit/identity'
import { createIstioCaSource } from '@ambientkit/ca'
import { createNodeAgent } from '@ambientkit/agent'
import { createNodeProxy } from '@ambientkit/proxy'
import { parse } from 'yaml'
import { parseMainArgs, USAGE, type MainArgs } from './args'
import { loadNodeConfig } from './config'
import { createKubernetesPodSource } from './pod-source'
import { createKubernetesRegistrySync } from './registry-sync'

let args: MainArgs
try {
  args = parseMainArgs(process.argv.slice(2))
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n\n${USAGE}`)
  process.exit(2)
}
if (args.help) {
  process.stdout.write(USAGE)
  process.exit(0)
}

const log = createJsonLogger({ bindings: { component: 'ambientkit-node' } })
// ztunnel's paths: the mesh root from the ambientkit-ca-root ConfigMap, the projected token.
const CA_ROOT_FILE = '/var/run/secrets/istio/root-cert.pem'
const TOKEN_FILE = '/var/run/secrets/tokens/istio-token'
// The Workload API for this node's pods: a hostPath directory pods mount to use it.
const WORKLOAD_API_SOCKET = '/var/run/ambientkit/workload-api/socket'
const config = loadNodeConfig(await readFile(args.config, 'utf8'), process.env)

// SVIDs come from the CA service, as ztunnel's come from istiod: the key stays
// in the control plane; this node proves with its projected token (audience
// istio-ca) which node it is, and gets only the identities of its pods.
const identities = createIdentityManager({
  source: createIstioCaSource({
    address: config.caAddress,
    trustDomain: config.trustDomain,
    rootCertificates: () => readFileSync(CA_ROOT_FILE, 'utf8'),
    token: () => readFileSync(TOKEN_FILE, 'utf8'),
    watchBundles: true,
    logger: log,
  }),
  ttlSeconds: config.svidTtlSeconds,
  logger: log,
})
const policies = createPolicyStore(config.policiesFile === undefined ? [] : (parse(await readFile(config.policiesFile, 'utf8')) as unknown[]) ?? [])
const registry = createWorkloadRegistry()
const registrySync = createKubernetesRegistrySync({ registry, trustDomain: config.trustDomain, logger: log })
await registrySync.ready()

const nodeProxy = createNodeProxy({
  nodeName: config.nodeName,
  registry,
  identities,
  policies,
  admin: { host: config.adminAddress.address, port: config.adminAddress.port },
  workloadDefaults: { outboundPolicy: config.outboundPolicy, inboundPlaintext: config.inboundPlaintext },
  sameNodeFastPath: config.sameNodeFastPath,
  logger: log,
})
await nodeProxy.start()

const metrics = config.metricsAddress
  ? createServer((req, res) => {
      if (req.url !== '/metrics') return void res.writeHead(404).end()
      void nodeProxy.metrics.exposition?.().then(({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body))
    }).listen(config.metricsAddress.port, config.metricsAddress.address)
  : undefined

const podSource = createKubernetesPodSource({ nodeName: config.nodeName, trustDomain: config.trustDomain, logger: log })
// Kubelet probes are rewritten in the node's own namespace, where the
// kubelet runs: with hostPID, /proc/1 is the node's init, and its namespace the node's.
const agent = createNodeAgent({
  nodeProxy,
  podSource,
  stateFile: config.stateFile,
  probes: { netns: '/proc/1/ns/net' },
  workloadApi: { socketPath: WORKLOAD_API_SOCKET, identities },
  logger: log,
})
const report = await agent.start()
log.info({ ...report }, 'node agent started')

// On SIGTERM (pod deletion, rolling update) stop following, drain, and leave
// every pod captured. In a rolling update the new agent is already serving
// next to this one (maxSurge in the DaemonSet): new connections go to it
// while this one's finish; otherwise the pods' traffic fails closed until
// the next agent is up.
process.once('SIGTERM', () => {
  log.info('draining')
  void (async () => {
    await podSource.close()
    await nodeProxy.drain({ deadline: 20_000 })
    await agent.close()
    await registrySync.close()
    await identities.close()
    metrics?.close()
    process.exit(0)
  })()
})
