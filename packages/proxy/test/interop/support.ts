import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'

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

/** Resolves when an emitter emits 'close' (unlike `events.once`, an earlier 'error' does not reject). */
export function closed(emitter: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => emitter.once('close', () => resolve()))
}

/** PEM key and certificate of one workload. */
export interface TestSvid {
  readonly id: string
  readonly key: string
  readonly cert: string
}

/** A throwaway CA issuing X.509-SVIDs with the openssl CLI. */
export interface TestPki {
  readonly ca: string
  issue(id: string): TestSvid
  close(): void
}

export function createTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'ak-hbone-pki-'))
  const run = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  }
  run('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key')
  run('req', '-x509', '-new', '-key', 'ca.key', '-subj', '/O=ambientkit test', '-days', '1', '-out', 'ca.pem',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
  let n = 0
  return {
    ca: readFileSync(join(dir, 'ca.pem'), 'utf8'),
    issue(id: string): TestSvid {
      const name = `leaf${n++}`
      run('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`)
      run('req', '-new', '-key', `${name}.key`, '-subj', '/O=ambientkit test', '-out', `${name}.csr`)
      writeFileSync(join(dir, `${name}.ext`), `subjectAltName=critical,URI:${id}\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n`)
      run('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1',
        '-extfile', `${name}.ext`, '-out', `${name}.pem`)
      return { id, key: readFileSync(join(dir, `${name}.key`), 'utf8'), cert: readFileSync(join(dir, `${name}.pem`), 'utf8') }
    },
    close: () => rmSync(dir, { recursive: true, force: true }),
  }
}
