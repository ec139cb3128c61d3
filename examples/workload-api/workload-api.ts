// The @ambientkit/workload-api README example: a node's Workload API, and a workload reading its SVID from it.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { SpiffeId, createCertificateAuthority, createIdentityManager, createLocalCaSource } from '@ambientkit/identity'
import { createWorkloadApiServer, createWorkloadApiSource } from '@ambientkit/workload-api'

const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
const identities = createIdentityManager({ source: createLocalCaSource(ca) })
const api = SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/api')

// The node agent's side. A real one attests by network namespace
// (createNetnsAttestor over its enrolled pods); here, this process is "the pod".
const dir = mkdtempSync(join(tmpdir(), 'workload-api-'))
const server = await createWorkloadApiServer({
  socketPath: join(dir, 'socket'),
  manager: identities,
  attest: (caller) => (caller.pid === process.pid ? [api] : []),
})

// The workload's side: SPIFFE_ENDPOINT_SOCKET=unix://<path>, or the address option.
const workload = createIdentityManager({ source: createWorkloadApiSource({ address: `unix://${join(dir, 'socket')}` }) })
const svid = await workload.get(api)
assert.equal(svid.id.toString(), 'spiffe://cluster.local/ns/shop/sa/api')
assert.ok(workload.bundles.get('cluster.local'))

// A rotation on the node reaches the workload over the stream.
const rotated = new Promise<void>((resolve) => workload.subscribe((event) => event.type === 'rotated' && resolve()))
await identities.rotate(api)
await rotated

await workload.close()
await server.close()
await identities.close()
rmSync(dir, { recursive: true, force: true })
