// The example of packages/identity/README.md: test/examples.test.ts runs it and keeps the two identical.
import assert from 'node:assert/strict'
import http2 from 'node:http2'
import type { TLSSocket } from 'node:tls'
import {
  SpiffeId, createCertificateAuthority, createIdentityManager, createLocalCaSource,
  tlsServerOptions, attachTlsServer, tlsClientOptions, peerSpiffeId, verifyX509Svid,
} from '@ambientkit/identity'

// A CA for the trust domain, and a manager that issues from it.
const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
const api = SpiffeId.fromServiceAccount('cluster.local', 'shop', 'api')
const web = SpiffeId.fromServiceAccount('cluster.local', 'shop', 'web')

// Issue and verify by hand.
const svid = await manager.get(web)
assert.equal(verifyX509Svid(svid.certificateChainPem, manager.bundles).toString(), 'spiffe://cluster.local/ns/shop/sa/web')

// An HTTP/2 server presenting api's SVID, answering with the caller's verified ID.
const serverOptions = await tlsServerOptions({ manager, id: api, alpnProtocols: ['h2'] })
const server = http2.createSecureServer(serverOptions)
const binding = attachTlsServer(server, serverOptions)
server.on('stream', (stream) => {
  stream.respond({ ':status': 200 })
  stream.end(`hello ${peerSpiffeId(stream.session!.socket as TLSSocket).toString()}`)
})
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
const { port } = server.address() as { port: number }

async function call(): Promise<string> {
  // By IP, no SNI; web's SVID; only api is an acceptable server.
  const session = http2.connect(`https://127.0.0.1:${port}`,
    await tlsClientOptions({ manager, id: web, expectedPeers: [api], alpnProtocols: ['h2'] }))
  await new Promise((resolve) => session.once('connect', resolve))
  const socket = session.socket as TLSSocket
  const server = peerSpiffeId(socket)
  // getPeerCertificate(): on a Node 20 client, getPeerX509Certificate() works only once.
  const serial = socket.getPeerCertificate().serialNumber
  const request = session.request({ ':path': '/' })
  request.setEncoding('utf8')
  let body = ''
  for await (const chunk of request) body += chunk
  assert.equal(body, 'hello spiffe://cluster.local/ns/shop/sa/web')
  assert.equal(server.toString(), 'spiffe://cluster.local/ns/shop/sa/api')
  session.close()
  return serial
}

const before = await call()
await manager.rotate(api)                 // what the manager does by itself at half-life
const after = await call()
assert.notEqual(before, after) // the next handshake presented the rotated certificate

binding.close()
await new Promise((resolve) => server.close(resolve))
await manager.close()
