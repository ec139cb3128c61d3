// The example of packages/proxy/README.md: test/examples.test.ts runs it and keeps the two identical.
import assert from 'node:assert/strict'
import { createServer, type AddressInfo } from 'node:net'
import { createCertificateAuthority, createIdentityManager, createLocalCaSource, tlsClientOptions, tlsServerOptions } from '@ambientkit/identity'
import { createHboneClient, createHboneServer } from '@ambientkit/proxy'

// One CA, one identity manager holding both workloads' SVIDs.
const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
const manager = createIdentityManager({ source: createLocalCaSource(ca) })
const web = 'spiffe://cluster.local/ns/shop/sa/web'
const api = 'spiffe://cluster.local/ns/shop/sa/api'

// The "app": an echo server on loopback.
const app = createServer((socket) => socket.pipe(socket))
await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve))
const appPort = (app.address() as AddressInfo).port

// The api workload's HBONE server: only its own identity's peers from the shop namespace.
const server = createHboneServer({
  tls: await tlsServerOptions({ manager, id: api, alpnProtocols: ['h2'] }),
  decide: ({ peerIdentity }) =>
    peerIdentity.startsWith('spiffe://cluster.local/ns/shop/')
      ? { action: 'serve' }
      : { action: 'deny', reason: 'not from the shop namespace' },
})
const hbone = await server.listen(0, '127.0.0.1')

// The web workload's pooled HBONE client, expecting the api identity.
const client = createHboneClient({
  tls: (identity, { expectedIdentities, signal }) =>
    tlsClientOptions({ manager, id: identity ?? web, expectedPeers: expectedIdentities, alpnProtocols: ['h2'], signal }),
})
const tunnel = await client.connect(`127.0.0.1:${appPort}`, {
  identity: web,
  expectedIdentities: [api],
  via: `127.0.0.1:${hbone.port}`,
})

const chunks: Buffer[] = []
tunnel.on('data', (chunk: Buffer) => chunks.push(chunk))
const ended = new Promise((resolve) => tunnel.on('end', resolve))
tunnel.end('hello over mTLS')
await ended
assert.equal(Buffer.concat(chunks).toString(), 'hello over mTLS')

await client.close()
await server.close()
await manager.close()
app.close()
