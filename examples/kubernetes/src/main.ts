/**
 * The node agent of the Kubernetes DaemonSet: the pod watcher and registry
 * sync of this example feeding `@ambientkit/agent`'s node agent and `@ambientkit/proxy`'s node proxy.
 *
 *   node dist/main.js --config /etc/ambientkit/mesh.yaml
 */
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import { createJsonLogger, createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
import { createIdentityManager, createLocalCaSource, loadCertificateAuthority } from '@ambientkit/identity'
import { createNodeAgent } from '@ambientkit/agent'
import { createNodeProxy } from '@ambientkit/proxy'
import { parse } from 'yaml'
import { loadNodeConfig } from './config'
import { createKubernetesPodSource } from './pod-source'
import { createKubernetesRegistrySync } from './registry-sync'

const log = createJsonLogger({ bindings: { component: 'ambientkit-node' } })
const configPath = process.argv[process.argv.indexOf('--config') + 1] ?? '/etc/ambientkit/mesh.yaml'
const config = loadNodeConfig(await readFile(configPath, 'utf8'), process.env)

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
const agent = createNodeAgent({ nodeProxy, podSource, stateFile: config.stateFile, logger: log })
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
