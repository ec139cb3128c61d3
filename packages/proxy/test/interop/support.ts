import { writeFileSync } from 'node:fs'
import http2 from 'node:http2'
import { join } from 'node:path'
import { once } from 'node:events'
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import {
  attachTlsServer,
  createCertificateAuthority,
  createIdentityManager,
  createLocalCaSource,
  tlsClientOptions,
  tlsServerOptions,
  type CertificateAuthority,
  type IdentityManager,
  type SpiffeTlsServerOptions,
} from '@ambientkit/identity'
import type { ClientTlsOptionsFn } from '@ambientkit/proxy'

/** A TCP echo server on loopback that keeps half-close: it ends its side when the client ends. */
export async function startEchoServer(host = '127.0.0.1'): Promise<{ server: Server; port: number; sockets: Set<Socket>; close(): Promise<void> }> {
  const sockets = new Set<Socket>()
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    socket.pipe(socket)
  })
  server.listen(0, host)
  await once(server, 'listening')
  return {
    server,
    port: (server.address() as AddressInfo).port,
    sockets,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

/** Reads a stream to its end without destroying it (its writable side may still be in use). */
export function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    stream.on('data', (chunk: Buffer) => chunks.push(chunk))
    stream.once('end', () => resolve(Buffer.concat(chunks)))
    stream.once('error', reject)
  })
}

/**
 * Resolves when an emitter emits 'close' (unlike `events.once`, an earlier
 * 'error' does not reject), at once when it is a stream that closed already.
 */
export function closed(emitter: NodeJS.EventEmitter): Promise<void> {
  if ((emitter as { closed?: unknown }).closed === true) return Promise.resolve()
  return new Promise((resolve) => emitter.once('close', () => resolve()))
}

/** A CA and an identity manager from @ambientkit/identity, for tests. */
export interface TestMesh {
  readonly ca: CertificateAuthority
  readonly manager: IdentityManager
  /** PEM of the trust domain's root(s). */
  readonly rootsPem: string
  /** HBONE server TLS options presenting `id`. */
  serverTls(id: string): Promise<SpiffeTlsServerOptions>
  /** HBONE client TLS options function presenting `id` unless `connect` names another. */
  clientTls(id: string): ClientTlsOptionsFn
  close(): Promise<void>
}

export async function createTestMesh(trustDomain = 'cluster.local'): Promise<TestMesh> {
  const ca = await createCertificateAuthority({ trustDomain })
  const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
  return {
    ca,
    manager,
    rootsPem: ca.bundle.x509AuthoritiesPem(),
    serverTls: (id) => tlsServerOptions({ manager, id }),
    clientTls: (id) => (identity, { expectedIdentities, signal }) =>
      tlsClientOptions({ manager, id: identity ?? id, expectedPeers: expectedIdentities, signal }),
    close: () => manager.close(),
  }
}

/** Writes an identity's key, chain and the roots as PEM files for a foreign program. */
export async function writeSvidFiles(mesh: TestMesh, id: string, dir: string, name: string): Promise<{ key: string; cert: string; ca: string }> {
  const svid = await mesh.manager.get(id)
  const files = { key: join(dir, `${name}.key`), cert: join(dir, `${name}.pem`), ca: join(dir, 'roots.pem') }
  writeFileSync(files.key, svid.privateKeyPem)
  writeFileSync(files.cert, svid.certificateChainPem)
  writeFileSync(files.ca, mesh.rootsPem)
  return files
}

/**
 * Node's HTTP/2 server with `id`'s SVID, as a foreign HBONE server whose
 * answers a test scripts: `onStream` gets each CONNECT and its index (0 for
 * the first). `port` is where it listens; `sessions` the sessions it saw.
 */
export async function startScriptedHttp2Server(
  mesh: TestMesh,
  id: string,
  onStream: (stream: http2.ServerHttp2Stream, index: number) => void,
): Promise<{ port: number; sessions: Set<http2.ServerHttp2Session>; close(): Promise<void> }> {
  const options = await mesh.serverTls(id)
  const server = http2.createSecureServer({ ...options, ALPNProtocols: ['h2'] })
  const binding = attachTlsServer(server, options)
  const sessions = new Set<http2.ServerHttp2Session>()
  let streams = 0
  server.on('session', (session) => sessions.add(session))
  server.on('stream', (stream) => {
    stream.on('error', () => {})
    onStream(stream, streams++)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    port: (server.address() as AddressInfo).port,
    sessions,
    close: () =>
      new Promise<void>((resolve) => {
        binding.close()
        for (const session of sessions) session.destroy()
        server.close(() => resolve())
      }),
  }
}

/** What {@link startScriptedHttp2Server} does to serve a CONNECT: 200, then echo. */
export function echoStream(stream: http2.ServerHttp2Stream): void {
  stream.respond({ ':status': 200 })
  stream.pipe(stream)
}
