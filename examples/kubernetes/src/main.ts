/**
 * The node agent of the Kubernetes DaemonSet: the pod watcher and registry
 * sync of this example feeding `@ambientkit/agent`'s node agent and `@ambientkit/proxy`'s node proxy.
 *
 *   node dist/main.js --config /etc/ambientkit/mesh.yaml   (--help for the usage)
 */
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import { createJsonLogger, createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
import { createIdentityManager, createLocalCaSource, loadCertificateAuthority } from '@ambientkit/identity'
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
const config = loadNodeConfig(await readFile(args.config, 'utf8'), process.env)

// The mesh CA, mounted from a Secret. Every node holding the CA key can mint
// any identity: see docs/security.md for why and what replaces it.
const ca = loadCertificateAuthority({
  certificateChainPem: await readFile(`${config.caDir}/ca.crt`, 'utf8'),
  privateKeyPem: await readFile(`${config.caDir}/ca.key`, 'utf8'),
})
const identities = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: config.svidTtlSeconds, logger: log })
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
const agent = createNodeAgent({ nodeProxy, podSource, stateFile: config.stateFile, probes: { netns: '/proc/1/ns/net' }, logger: log })
const report = await agent.start()
log.info({ ...report }, 'node agent started')

// On SIGTERM (pod deletion, rolling update) stop following, drain, and leave
// every pod captured: its traffic fails closed until the next agent is up.
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
