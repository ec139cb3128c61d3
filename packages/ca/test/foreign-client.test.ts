import { execFile, execFileSync } from 'node:child_process'
import { promisify } from 'node:util'
import { X509Certificate, createPublicKey } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { verifyX509Svid } from '@ambientkit/identity'
import { CA_HOST, startTestCa, type TestCa } from './support'

const python = '/usr/bin/python3'
const script = fileURLToPath(new URL('./python/create_certificate.py', import.meta.url))
const protoDir = fileURLToPath(new URL('../proto/', import.meta.url))

function missing(): string | undefined {
  try {
    execFileSync(python, ['-c', 'import grpc, google.protobuf, cryptography'], { stdio: 'ignore' })
    execFileSync('protoc', ['--version'], { stdio: 'ignore' })
    return undefined
  } catch {
    return 'needs /usr/bin/python3 with python3-grpcio, python3-protobuf, python3-cryptography and protoc (protobuf-compiler): run npm run setup'
  }
}

const reason = missing()
if (reason !== undefined && process.env.CI) throw new Error(reason)
if (reason !== undefined) console.warn(`[skip] foreign CreateCertificate client: ${reason}`)

describe.skipIf(reason !== undefined)('CreateCertificate from Python\'s grpcio (a gRPC stack we did not write)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ak-ca-py-'))
  let t: TestCa
  beforeAll(async () => {
    t = await startTestCa()
    execFileSync('protoc', [`-I${protoDir}`, '-I/usr/include', `--python_out=${dir}`, 'istio/v1/auth/ca.proto'])
    writeFileSync(join(dir, 'roots.pem'), t.rootsPem)
  })
  afterAll(async () => {
    await t.close()
    rmSync(dir, { recursive: true, force: true })
  })

  // Asynchronous: the server answers from this process's event loop.
  const run = async (token: string, id: string): Promise<Record<string, unknown>> =>
    JSON.parse((await promisify(execFile)(python, [script, dir, t.address, join(dir, 'roots.pem'), CA_HOST, token, id], { encoding: 'utf8' })).stdout) as Record<string, unknown>

  it('gets an SVID for its own key, leaf first and roots last', async () => {
    expect(existsSync(join(dir, 'istio/v1/auth/ca_pb2.py'))).toBe(true)
    const out = await run('node-1-agent', 'spiffe://cluster.local/ns/shop/sa/api') as { chain: string[]; public_key: string }
    expect(out.chain).toHaveLength(2)
    const leaf = new X509Certificate(out.chain[0]!)
    expect(leaf.subjectAltName).toBe('URI:spiffe://cluster.local/ns/shop/sa/api')
    expect(leaf.publicKey.equals(createPublicKey(out.public_key))).toBe(true)
    expect(out.chain[1]).toBe(t.rootsPem)
    expect(verifyX509Svid(out.chain[0]!, t.ca.bundle).toString()).toBe('spiffe://cluster.local/ns/shop/sa/api')
  })

  it('gets Istio\'s status and text when it asks for a pod of another node', async () => {
    expect(await run('node-1-agent', 'spiffe://cluster.local/ns/shop/sa/db')).toEqual({ code: 'UNAUTHENTICATED', details: 'request impersonation authentication failure' })
    expect(await run('forged', 'spiffe://cluster.local/ns/shop/sa/api')).toEqual({ code: 'UNAUTHENTICATED', details: 'request authenticate failure' })
  })
})
