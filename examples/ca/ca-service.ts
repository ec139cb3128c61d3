// The @ambientkit/ca README example: a CA service, and a node agent getting its pods' SVIDs from it.
import assert from 'node:assert/strict'
import { SpiffeId, createCertificateAuthority, createIdentityManager, createLocalCaSource, verifyX509Svid } from '@ambientkit/identity'
import { createCaServer, createIstioCaSource, createNodeCredentialAuthenticator, type AuditEntry, type PodDirectory } from '@ambientkit/ca'

// The control plane holds the CA's key. Its own TLS certificate is an SVID
// with a DNS name, so clients check it as ztunnel checks istiod's.
const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
const own = createIdentityManager({ source: createLocalCaSource(ca, { dnsNames: () => ['ca.mesh.internal'] }) })

// Which pods run where: here a table; on Kubernetes, createKubernetesPodDirectory.
const scheduled = [{ namespace: 'shop', serviceAccount: 'api', node: 'node-1' }, { namespace: 'shop', serviceAccount: 'db', node: 'node-2' }]
const pods: PodDirectory = {
  hasPod: async (q) => scheduled.some((p) => p.namespace === q.namespace && p.serviceAccount === q.serviceAccount && p.node === q.node),
}

const audit: AuditEntry[] = []
const server = await createCaServer({
  ca,
  tls: { manager: own, id: 'spiffe://cluster.local/ns/mesh-system/sa/control-plane' },
  listen: { host: '127.0.0.1', port: 0 },
  // Node agents authenticate with a per-node secret (on Kubernetes: a projected token, TokenReview).
  authenticators: [createNodeCredentialAuthenticator({
    nodes: [{ node: 'node-1', credential: 'node-1-secret' }],
    identity: 'spiffe://cluster.local/ns/mesh-system/sa/node-agent',
  })],
  trustedNodeAccounts: ['mesh-system/node-agent'],
  pods,
  audit: (entry) => audit.push(entry),
})
const { port } = server.address() as { port: number }

// Node 1's agent: a fresh key per request; the key never leaves the node.
const identities = createIdentityManager({
  source: createIstioCaSource({
    address: `127.0.0.1:${port}`,
    trustDomain: 'cluster.local',
    rootCertificates: ca.bundle.x509AuthoritiesPem(),
    serverIdentity: { serverName: 'ca.mesh.internal' },
    token: 'node-1-secret',
  }),
})
const api = await identities.get('spiffe://cluster.local/ns/shop/sa/api')
assert.equal(verifyX509Svid(api.certificateChainPem, identities.bundles).toString(), 'spiffe://cluster.local/ns/shop/sa/api')

// db runs on node 2: node 1 cannot have its identity, and learns nothing more than Istio's text.
await assert.rejects(identities.get(SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/db')), /request impersonation authentication failure/)
assert.deepEqual(audit.map((e) => [e.event, e.requested, e.reason]), [
  ['issued', 'spiffe://cluster.local/ns/shop/sa/api', undefined],
  ['refused', 'spiffe://cluster.local/ns/shop/sa/db', 'no pod of shop/db, not Failed, is scheduled on node node-1'],
])

await identities.close()
await server.close()
await own.close()
