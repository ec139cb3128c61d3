// The example of packages/core/README.md: test/examples.test.ts runs it and keeps the two identical.
import assert from 'node:assert/strict'
import { createWorkloadRegistry, evaluateAuthorization, loadAuthorizationPolicy } from '@ambientkit/core'

const registry = createWorkloadRegistry()
registry.upsertWorkload({
  uid: 'pod-1', name: 'api', namespace: 'shop', serviceAccount: 'api', node: 'node-1',
  addresses: ['10.1.0.5', 'fd00:1::5'], protocol: 'HBONE', labels: { app: 'api' },
})

const policies = [
  loadAuthorizationPolicy({
    name: 'allow-frontend', namespace: 'shop', scope: 'namespace', action: 'ALLOW',
    rules: [[[{ principals: ['cluster.local/ns/web/sa/frontend'] }]]],
  }),
  loadAuthorizationPolicy({
    name: 'deny-admin', namespace: 'shop', scope: 'namespace', action: 'DENY',
    rules: [[[{ destinationPorts: [9090] }]]],
  }),
]

const destination = registry.workloadByAddress('::ffff:10.1.0.5')!
const decision = evaluateAuthorization(policies, {
  sourceIp: '10.2.0.7',
  sourceIdentity: 'spiffe://cluster.local/ns/web/sa/frontend',
  destinationIp: '10.1.0.5',
  destinationPort: 8080,
  destination,
})
assert.equal(decision.allowed, true)
assert.equal(decision.policy?.name, 'allow-frontend')
