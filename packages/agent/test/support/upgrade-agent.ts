// One agent process of the upgrade test: a node proxy and a node agent for
// the pods of a JSON file, with SVIDs from the test's CA (so the old and the
// new process trust each other, as two agents of one cluster do). Prints one
// JSON line when ready; on SIGTERM it drains (stops accepting, lets open
// connections finish) and exits.
// node --import tsx upgrade-agent.ts <config.json>
import { readFileSync } from 'node:fs'
import { createPolicyStore, createWorkloadRegistry, type PodEnrollment } from '@ambientkit/core'
import { createIdentityManager, createLocalCaSource, loadCertificateAuthority, type CertificateAuthorityPem } from '@ambientkit/identity'
import { createNodeAgent } from '@ambientkit/agent'
import { createNodeProxy } from '@ambientkit/proxy'
import { createListPodSource } from './agent-test'

interface UpgradeAgentConfig {
  readonly ca: CertificateAuthorityPem
  readonly pods: PodEnrollment[]
  readonly drainMs: number
}

const config = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as UpgradeAgentConfig
const registry = createWorkloadRegistry()
for (const pod of config.pods) registry.upsertWorkload(pod.workload)
const identities = createIdentityManager({ source: createLocalCaSource(loadCertificateAuthority(config.ca)), ttlSeconds: 3600 })
// The admin port is the real one: the new process serves it next to the old one.
const nodeProxy = createNodeProxy({ nodeName: 'node-1', registry, identities, policies: createPolicyStore(), admin: { host: '127.0.0.1' } })
await nodeProxy.start()
const agent = createNodeAgent({ nodeProxy, podSource: createListPodSource(config.pods), backend: 'nftables', probes: false, repairIntervalMs: 0 })
const report = await agent.start()
process.once('SIGTERM', () => {
  void (async () => {
    await nodeProxy.drain({ deadline: config.drainMs })
    await agent.close()
    await identities.close()
    process.exit(0)
  })()
})
process.stdout.write(`${JSON.stringify({ ready: report.failed.length === 0, ...report })}\n`)
