import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import tls from 'node:tls'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { X509Certificate } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import {
  IdentityErrorCode, SpiffeId, attachTlsServer, createCertificateAuthority, createIdentityManager, createLocalCaSource, loadCertificateAuthority, createTrustBundleSet,
  peerSpiffeId, tlsClientOptions, tlsServerOptions, type CertificateAuthority, type IdentityManager, type KeyType,
} from '@ambientkit/identity'
import { craft } from './craft'
import { KeyUsageBit } from '../src/certificate'

const serverId = SpiffeId.fromServiceAccount('example.org', 'shop', 'api')
const clientId = SpiffeId.fromServiceAccount('example.org', 'shop', 'web')
const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

function closeServer(server: tls.Server | http2.Http2SecureServer): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()))
}

async function setup(keyType: KeyType = 'ecdsa-p256'): Promise<{ ca: CertificateAuthority; manager: IdentityManager }> {
  const ca = await createCertificateAuthority({ trustDomain: 'example.org', keyType })
  const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 600 })
  cleanups.push(() => manager.close())
  return { ca, manager }
}

async function echoServer(manager: IdentityManager, extra: Partial<Parameters<typeof tlsServerOptions>[0]> = {}): Promise<{ server: tls.Server; port: number; rejections: Error[] }> {
  const options = await tlsServerOptions({ manager, id: serverId, ...extra })
  const server = tls.createServer(options, (socket) => {
    socket.write(`${peerSpiffeId(socket).toString()}\n`)
    socket.pipe(socket)
  })
  const binding = attachTlsServer(server, options)
  const rejections: Error[] = []
  server.on('tlsClientError', (err: Error) => rejections.push(err))
  const sockets = new Set<tls.TLSSocket>()
  server.on('secureConnection', (s: tls.TLSSocket) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  cleanups.push(async () => {
    binding.close()
    for (const s of sockets) s.destroy()
    await closeServer(server)
  })
  return { server, port: (server.address() as AddressInfo).port, rejections }
}

async function connect(port: number, options: tls.ConnectionOptions): Promise<{ socket: tls.TLSSocket; firstLine: string }> {
  const socket = tls.connect({ ...options, host: '127.0.0.1', port })
  cleanups.push(() => socket.destroy())
  const lines = createInterface({ input: socket })
  const [firstLine] = (await once(lines, 'line')) as [string]
  lines.close()
  return { socket, firstLine }
}

function line(socket: tls.TLSSocket, text: string): Promise<string> {
  const lines = createInterface({ input: socket })
  const next = once(lines, 'line').then(([l]) => {
    lines.close()
    return l as string
  })
  socket.write(`${text}\n`)
  return next
}

describe.each<KeyType>(['ecdsa-p256', 'rsa-2048'])('mutual TLS with SPIFFE IDs (%s)', (keyType) => {
  it('connects, verifies both sides and exposes the peer IDs', async () => {
    const { manager } = await setup(keyType)
    const { port } = await echoServer(manager)
    const { socket, firstLine } = await connect(port, await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId] }))
    expect(firstLine).toBe(clientId.toString())
    expect(peerSpiffeId(socket).equals(serverId)).toBe(true)
    expect(socket.getProtocol()).toBe('TLSv1.3')
    // Regression: a Node 20 client's getPeerX509Certificate() consumes the leaf; peerSpiffeId must not.
    expect(new X509Certificate(socket.getPeerCertificate().raw).subjectAltName).toBe(`URI:${serverId.toString()}`)
    expect(await line(socket, 'ping')).toBe('ping')
  })
})

describe('mutual TLS with SPIFFE IDs', () => {
  it('works between two processes', async () => {
    const { ca, manager } = await setup()
    const saved = ca.save()
    const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./fixtures/mtls-server.ts', import.meta.url))], {
      cwd: fileURLToPath(new URL('../../..', import.meta.url)),
      env: { ...process.env, AK_CA_CERT: saved.certificateChainPem, AK_CA_KEY: saved.privateKeyPem, AK_SERVER_ID: serverId.toString() },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const exited = once(child, 'exit')
    cleanups.push(async () => {
      if (child.exitCode === null) child.kill('SIGTERM')
      await exited
    })
    let stderr = ''
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()))
    const lines = createInterface({ input: child.stdout! })
    const first = await Promise.race([
      once(lines, 'line').then(([l]) => l as string),
      exited.then(([code]) => {
        throw new Error(`server process exited with ${String(code)}: ${stderr}`)
      }),
    ])
    lines.close()
    const { port } = JSON.parse(first) as { port: number }
    const { socket, firstLine } = await connect(port, await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId] }))
    expect(firstLine).toBe(clientId.toString())
    expect(peerSpiffeId(socket).toString()).toBe(serverId.toString())
    expect(await line(socket, 'across processes')).toBe('across processes')
  })

  it('verifies chains through an intermediate CA on both sides', async () => {
    const root = await createCertificateAuthority({ trustDomain: 'example.org' })
    const intermediate = await craft(root, { cA: true, keyUsage: [KeyUsageBit.keyCertSign, KeyUsageBit.cRLSign], uris: ['spiffe://example.org'], subjectCn: 'intermediate' })
    const ca = loadCertificateAuthority({
      certificateChainPem: intermediate.pem + root.save().certificateChainPem,
      privateKeyPem: intermediate.key.export({ type: 'pkcs8', format: 'pem' }) as string,
    })
    const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 600 })
    cleanups.push(() => manager.close())
    expect(manager.bundles.get('example.org')!.x509Authorities[0]!.raw.equals(root.certificate.raw)).toBe(true)
    const { port } = await echoServer(manager)
    const { socket, firstLine } = await connect(port, await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId] }))
    expect(firstLine).toBe(clientId.toString())
    expect(peerSpiffeId(socket).equals(serverId)).toBe(true)
  })

  it('connects across federated trust domains', async () => {
    const a = await createCertificateAuthority({ trustDomain: 'a.example' })
    const b = await createCertificateAuthority({ keyType: 'rsa-2048', trustDomain: 'b.example' })
    const managerA = createIdentityManager({ source: createLocalCaSource(a, { federatedBundles: createTrustBundleSet([b.bundle]) }), ttlSeconds: 600 })
    const managerB = createIdentityManager({ source: createLocalCaSource(b, { federatedBundles: createTrustBundleSet([a.bundle]) }), ttlSeconds: 600 })
    cleanups.push(() => managerA.close(), () => managerB.close())
    const server = SpiffeId.fromServiceAccount('b.example', 'shop', 'api')
    const client = SpiffeId.fromServiceAccount('a.example', 'shop', 'web')
    const options = await tlsServerOptions({ manager: managerB, id: server })
    const tlsServer = tls.createServer(options, (socket) => socket.end(`${peerSpiffeId(socket).toString()}\n`))
    const binding = attachTlsServer(tlsServer, options)
    tlsServer.listen(0, '127.0.0.1')
    await once(tlsServer, 'listening')
    cleanups.push(async () => {
      binding.close()
      await closeServer(tlsServer)
    })
    const { socket, firstLine } = await connect((tlsServer.address() as AddressInfo).port, await tlsClientOptions({ manager: managerA, id: client, expectedPeers: [server] }))
    expect(firstLine).toBe(client.toString())
    expect(peerSpiffeId(socket).equals(server)).toBe(true)
  })

  it('fails the handshake when the server is not an expected peer', async () => {
    const { manager } = await setup()
    const { port } = await echoServer(manager)
    const socket = tls.connect({ ...(await tlsClientOptions({ manager, id: clientId, expectedPeers: ['spiffe://example.org/ns/shop/sa/db'] })), host: '127.0.0.1', port })
    cleanups.push(() => socket.destroy())
    const [error] = (await once(socket, 'error').catch((err: unknown) => [err])) as [Error & { code?: string }]
    expect(error.code).toBe(IdentityErrorCode.UnexpectedPeer)
    expect(error.message).toMatch(/server presented spiffe:\/\/example\.org\/ns\/shop\/sa\/api, expected one of spiffe:\/\/example\.org\/ns\/shop\/sa\/db/)
  })

  it('refuses a client whose certificate comes from an untrusted CA', async () => {
    const { ca, manager } = await setup()
    const { port, server } = await echoServer(manager)
    let accepted = 0
    server.on('secureConnection', () => accepted++)
    const rogue = await setup()
    // The rogue client trusts the real server, but its own SVID comes from a CA the server does not know.
    rogue.manager.bundles.set(ca.bundle)
    const socket = tls.connect({ ...(await tlsClientOptions({ manager: rogue.manager, id: clientId, expectedPeers: [serverId] })), host: '127.0.0.1', port })
    cleanups.push(() => socket.destroy())
    socket.on('error', () => {})
    let received = ''
    socket.on('data', (d: Buffer) => (received += d.toString()))
    // OpenSSL verifies the chain; Node then closes the connection before any data.
    await once(socket, 'close')
    expect(received).toBe('')
    expect(accepted).toBe(0)
  })

  it('destroys a client whose SVID chains to a trusted root of another trust domain', async () => {
    const { ca, manager } = await setup()
    const otherCa = await createCertificateAuthority({ trustDomain: 'other.org' })
    manager.bundles.set(otherCa.bundle)
    const { port, rejections, server } = await echoServer(manager)
    // example.org's CA signs an other.org ID: OpenSSL accepts the chain, SPIFFE does not.
    const crossed = await craft(ca, { uris: ['spiffe://other.org/w'] })
    const rejected = once(server, 'tlsClientError')
    const socket = tls.connect({
      host: '127.0.0.1', port, minVersion: 'TLSv1.3', key: crossed.key.export({ type: 'pkcs8', format: 'pem' }), cert: crossed.pem,
      ca: ca.bundle.x509AuthoritiesPem(), checkServerIdentity: () => undefined,
    })
    cleanups.push(() => socket.destroy())
    socket.on('error', () => {})
    await rejected
    expect(rejections[0]).toMatchObject({ code: IdentityErrorCode.SvidRejected, details: { reason: 'untrusted' } })
    await once(socket, 'close')
  })

  it('refuses TLS 1.2', async () => {
    const { manager } = await setup()
    const { port } = await echoServer(manager)
    const options = await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId] })
    const socket = tls.connect({ ...options, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', secureContext: undefined, host: '127.0.0.1', port })
    cleanups.push(() => socket.destroy())
    const [error] = (await once(socket, 'error').catch((err: unknown) => [err])) as [Error & { code?: string }]
    expect(error.code).toMatch(/ERR_SSL|ECONNRESET/)
  })

  it('serves HTTP/2 with ALPN h2, peer IDs readable through http2 socket proxies', async () => {
    const { manager } = await setup()
    const options = await tlsServerOptions({ manager, id: serverId, alpnProtocols: ['h2'] })
    const server = http2.createSecureServer(options, (req, res) => {
      res.end(peerSpiffeId(req.socket as tls.TLSSocket).toString())
    })
    const binding = attachTlsServer(server, options)
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const port = (server.address() as AddressInfo).port
    const session = http2.connect(`https://127.0.0.1:${port}`, await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId], alpnProtocols: ['h2'] }))
    cleanups.push(async () => {
      session.destroy()
      binding.close()
      await closeServer(server)
    })
    await once(session, 'connect')
    expect(session.alpnProtocol).toBe('h2')
    expect(peerSpiffeId(session.socket as tls.TLSSocket).equals(serverId)).toBe(true)
    const req = session.request({ ':path': '/' })
    req.setEncoding('utf8')
    let body = ''
    req.on('data', (d: string) => (body += d))
    await once(req, 'end')
    expect(body).toBe(clientId.toString())
  })
})

describe('rotation', () => {
  // getPeerCertificate: a Node 20 client's getPeerX509Certificate() consumes the leaf (works once).
  const serialOf = (socket: tls.TLSSocket): string => socket.getPeerCertificate().serialNumber

  it('keeps established connections and presents the new SVID on the next handshake without SNI', async () => {
    const { manager } = await setup()
    const { port } = await echoServer(manager)
    const clientOptions = await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId] })
    expect(clientOptions.servername).toBeUndefined()
    const first = await connect(port, clientOptions)
    const before = serialOf(first.socket)
    expect(before).toBe(new X509Certificate(manager.current(serverId)!.certificateChainPem).serialNumber)

    const event = new Promise<string>((resolve) => {
      const off = manager.subscribe((e) => {
        if (e.type !== 'rotated' || !e.id.equals(serverId)) return
        off()
        resolve(new X509Certificate(e.svid.certificateChainPem).serialNumber)
      })
    })
    await manager.rotate(serverId)
    const after = await event
    expect(after).not.toBe(before)

    expect(await line(first.socket, 'still here')).toBe('still here')
    const second = await connect(port, await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId] }))
    expect(second.socket.servername === undefined || second.socket.servername === false || second.socket.servername === null).toBe(true)
    expect(serialOf(second.socket)).toBe(after)
    expect(serialOf(first.socket)).toBe(before)
    expect(await line(first.socket, 'and still here')).toBe('and still here')
  })

  it('swaps the certificate of an http2 server', async () => {
    const { manager } = await setup()
    const options = await tlsServerOptions({ manager, id: serverId, alpnProtocols: ['h2'] })
    const server = http2.createSecureServer(options, (_req, res) => res.end('ok'))
    const binding = attachTlsServer(server, options)
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const port = (server.address() as AddressInfo).port
    const sessions: http2.ClientHttp2Session[] = []
    cleanups.push(async () => {
      for (const s of sessions) s.destroy()
      binding.close()
      await closeServer(server)
    })
    const open = async (): Promise<string> => {
      const session = http2.connect(`https://127.0.0.1:${port}`, await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId], alpnProtocols: ['h2'] }))
      sessions.push(session)
      await once(session, 'connect')
      return (session.socket as tls.TLSSocket).getPeerCertificate().serialNumber
    }
    const before = await open()
    const svid = await manager.rotate(serverId)
    const after = await open()
    expect(after).not.toBe(before)
    expect(after).toBe(new X509Certificate(svid.certificateChainPem).serialNumber)
  })
})

describe('optional client certificates (a server that also takes token-authenticated clients)', () => {
  it('lets a client without a certificate in, verifies one with an SVID, refuses an untrusted one', async () => {
    const { manager } = await setup()
    const options = await tlsServerOptions({ manager, id: serverId, clientCertificate: 'optional' })
    const seen: string[] = []
    const server = tls.createServer(options, (socket) => {
      let peer = 'none'
      try {
        peer = peerSpiffeId(socket).toString()
      } catch (err) {
        expect((err as { code: string }).code).toBe(IdentityErrorCode.PeerNotVerified)
      }
      seen.push(peer)
      socket.end(`${peer}\n`)
    })
    const binding = attachTlsServer(server, options)
    const rejections: Error[] = []
    server.on('tlsClientError', (err: Error) => rejections.push(err))
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    cleanups.push(async () => {
      binding.close()
      await closeServer(server)
    })
    const port = (server.address() as AddressInfo).port
    const bundle = manager.bundles.get('example.org')!.x509AuthoritiesPem()
    const anonymous = await connect(port, { ca: bundle, checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' })
    expect(anonymous.firstLine).toBe('none')
    const withSvid = await connect(port, await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId] }))
    expect(withSvid.firstLine).toBe(clientId.toString())
    // An SVID of another CA of the same trust domain: OpenSSL lets it through (optional), the guard does not.
    const other = await setup()
    const stranger = await other.manager.get(clientId)
    const socket = tls.connect({ host: '127.0.0.1', port, ca: bundle, key: stranger.privateKeyPem, cert: stranger.certificateChainPem, checkServerIdentity: () => undefined })
    cleanups.push(() => socket.destroy())
    await once(socket, 'close')
    expect(seen).toEqual(['none', clientId.toString()])
    expect(rejections.map((e) => (e as { code?: string }).code)).toEqual([IdentityErrorCode.SvidRejected])
  })
})
