// The example of packages/istio/README.md: test/examples.test.ts runs it and keeps the two identical.
import assert from 'node:assert/strict'
import * as grpc from '@grpc/grpc-js'
import { createPolicyStore, createWorkloadRegistry, evaluateAuthorization } from '@ambientkit/core'
import { ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, adsServiceDefinition, createWdsClient, encodeMessage } from '@ambientkit/istio'

// A stand-in for istiod on its plaintext port: answers each type's first request once.
const resources: Record<string, Array<{ name: string; value: Buffer }>> = {
  [ADDRESS_TYPE_URL]: [{
    name: 'Kubernetes//Pod/shop/api-7d4f',
    value: encodeMessage('istio.workload.Address', {
      workload: { uid: 'Kubernetes//Pod/shop/api-7d4f', name: 'api-7d4f', namespace: 'shop', serviceAccount: 'api', node: 'node-1', tunnelProtocol: 1, addresses: [Buffer.from([10, 1, 0, 5])] },
    }),
  }],
  [AUTHORIZATION_TYPE_URL]: [{
    name: 'shop/only-web',
    value: encodeMessage('istio.security.Authorization', {
      name: 'only-web', namespace: 'shop', scope: 1, action: 0, // NAMESPACE, ALLOW
      rules: [{ clauses: [{ matches: [{ principals: [{ exact: 'cluster.local/ns/shop/sa/web' }] }] }] }],
    }),
  }],
}
const istiod = new grpc.Server()
istiod.addService(adsServiceDefinition(), {
  DeltaAggregatedResources: (call: grpc.ServerDuplexStream<{ typeUrl: string; responseNonce: string }, unknown>) => {
    call.on('data', ({ typeUrl, responseNonce }) => {
      if (responseNonce !== '') return // an ACK
      const list = resources[typeUrl] ?? []
      call.write({ typeUrl, nonce: typeUrl, resources: list.map(({ name, value }) => ({ name, version: '1', resource: { typeUrl, value } })) })
    })
  },
})
const port = await new Promise<number>((resolve, reject) =>
  istiod.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))))

// The WDS client keeps core's registry and policy store as istiod says.
const registry = createWorkloadRegistry()
const policies = createPolicyStore()
const wds = createWdsClient({ address: `http://127.0.0.1:${port}`, token: false, registry, policies })
await wds.start() // both types received and ACKed

const api = registry.workloadByAddress('10.1.0.5')!
assert.equal(api.namespace, 'shop')
const from = (sa: string) => evaluateAuthorization(policies.list(), {
  sourceIp: '10.1.0.9', sourceIdentity: `spiffe://cluster.local/ns/shop/sa/${sa}`, destinationIp: '10.1.0.5', destinationPort: 8080, destination: api,
})
assert.equal(from('web').allowed, true)
assert.equal(from('batch').allowed, false)
console.log(JSON.stringify(wds.configDump().xds.types[ADDRESS_TYPE_URL])) // {"resources":1,"acks":1,"nacks":0,"lastNonce":...}

await wds.close()
istiod.forceShutdown()
