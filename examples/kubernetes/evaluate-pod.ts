// Decides, for recorded pods, whether the node agent of worker-1 captures them (docs/kubernetes.md).
import { readFileSync } from 'node:fs'
import type { V1Namespace, V1Pod } from '@kubernetes/client-node'
import { evaluatePod } from './src/index'

const read = <T>(file: string): T => JSON.parse(readFileSync(new URL(`./test/fixtures/${file}`, import.meta.url), 'utf8')) as T
const shop = read<{ items: V1Namespace[] }>('namespaces.json').items.find((ns) => ns.metadata?.name === 'shop')

for (const file of ['pod-api.json', 'pod-web.json', 'pod-node-exporter.json', 'pod-migrate.json']) {
  const decision = evaluatePod(read<V1Pod>(file), shop, { nodeName: 'worker-1' })
  console.log(decision.enroll ? `enroll ${decision.workload.name} as ${decision.workload.addresses.join(', ')}` : `skip (${decision.reason}): ${decision.message}`)
}
