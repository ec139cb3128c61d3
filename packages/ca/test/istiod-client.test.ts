// The client against a CA that behaves as istiod documents (not as our
// server does): answers are crafted here, field by field.
import { execFileSync } from 'node:child_process'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import * as grpc from '@grpc/grpc-js'
import { createCertificateAuthority, createIdentityManager, SpiffeId, type CertificateAuthority } from '@ambientkit/identity'
import { CaErrorCode, createIstioCaSource } from '@ambientkit/ca'
import { caServices, type IstioCertificateRequest, type IstioCertificateResponse } from '../src/proto'

const ISTIOD = 'istiod.istio-system.svc'
const API = SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/api')

interface Seen {
  request: IstioCertificateRequest
  metadata: Record<string, unknown>
}

let root: CertificateAuthority
let newRoot: CertificateAuthority
let server: grpc.Server
let port: number
const seen: Seen[] = []
let answer: (request: IstioCertificateRequest) => Promise<IstioCertificateResponse | grpc.ServiceError>

beforeAll(async () => {
  root = await createCertificateAuthority({ trustDomain: 'cluster.local' })
  newRoot = await createCertificateAuthority({ trustDomain: 'cluster.local' })
  const serving = await root.issue('spiffe://cluster.local/ns/istio-system/sa/istiod', { dnsNames: [ISTIOD] })
  server = new grpc.Server()
  server.addService(caServices().IstioCertificateService.service, {
    CreateCertificate: (call: grpc.ServerUnaryCall<IstioCertificateRequest, IstioCertificateResponse>, cb: grpc.sendUnaryData<IstioCertificateResponse>) => {
      seen.push({ request: call.request, metadata: call.metadata.getMap() })
      answer(call.request).then((r) => ('code' in r ? cb(r) : cb(null, r)), (err: Error) => cb(err))
    },
  })
  port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(serving.privateKeyPem), cert_chain: Buffer.from(serving.certificateChainPem) }]), (err, p) => (err ? reject(err) : resolve(p))))
})
afterAll(() => server.forceShutdown())

/** istiod's signing: the SAN it is told (the CSR's ignored), each cert with a trailing newline. */
async function sign(request: IstioCertificateRequest, id = request.metadata?.fields?.ImpersonatedIdentity?.stringValue ?? '', ca = root): Promise<string> {
  return (await ca.signCsr(request.csr, { id, ttlSeconds: 600, csrSans: 'ignore' })).certificateChainPem
}

function client(extra: { clusterId?: string } = {}): ReturnType<typeof createIstioCaSource> {
  return createIstioCaSource({
    address: `https://127.0.0.1:${port}`,
    trustDomain: 'cluster.local',
    rootCertificates: () => root.bundle.x509AuthoritiesPem(),
    serverIdentity: { serverName: ISTIOD },
    token: () => 'eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiaXN0aW8tY2EiXX0.c2ln\n',
    ...extra,
  })
}

const reason = (err: unknown): unknown => (err as { code: string; details: { reason: string } }).code === CaErrorCode.BadResponse ? (err as { details: { reason: string } }).details.reason : err

describe('Istio CA client against istiod\'s documented behaviour', () => {
  it('sends ztunnel\'s request: a fresh P-256 CSR naming only the identity, bearer token, clusterid and ImpersonatedIdentity', async () => {
    answer = async (r) => ({ cert_chain: [await sign(r), root.bundle.x509AuthoritiesPem()] })
    const s = client()
    const svid = await s.fetch(API, { ttlSeconds: 86_400 })
    const second = await s.fetch(API, { ttlSeconds: 86_400 })
    await s.close()
    expect(svid.id.toString()).toBe(API.toString())
    const [first, again] = seen.slice(-2)
    expect(first!.metadata).toMatchObject({ authorization: 'Bearer eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiaXN0aW8tY2EiXX0.c2ln', clusterid: 'Kubernetes' })
    expect(first!.request.validity_duration).toBe(86_400)
    expect(first!.request.metadata?.fields?.ImpersonatedIdentity?.stringValue).toBe(API.toString())
    // A fresh key per request.
    expect(first!.request.csr).not.toBe(again!.request.csr)
    expect(second.privateKeyPem).not.toBe(svid.privateKeyPem)
    const text = execFileSync('openssl', ['req', '-noout', '-text', '-verify'], { input: first!.request.csr, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] })
    expect(text).toMatch(/Subject:\s*\n/)
    expect(text).toMatch(/ASN1 OID: prime256v1/)
    expect(text).toMatch(/Signature Algorithm: ecdsa-with-SHA256/)
    expect(text).toMatch(/X509v3 Subject Alternative Name: critical\s+URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/api\s*\n/)
  })

  it('sends no metadata when it asks for its own identity, and the cluster id it is given', async () => {
    answer = async (r) => ({ cert_chain: [await sign(r, API.toString()), root.bundle.x509AuthoritiesPem()] })
    const s = createIstioCaSource({ address: `127.0.0.1:${port}`, trustDomain: 'cluster.local', rootCertificates: root.bundle.x509AuthoritiesPem(), serverIdentity: { serverName: ISTIOD }, impersonate: false, clusterId: 'east' })
    await s.fetch(API, { ttlSeconds: 60 })
    await s.close()
    expect(seen.at(-1)!.request.metadata).toBeNull()
    expect(seen.at(-1)!.metadata.clusterid).toBe('east')
  })

  it('takes two concatenated roots in the last element (a root rotation) into its bundle', async () => {
    answer = async (r) => ({ cert_chain: [await sign(r), root.bundle.x509AuthoritiesPem() + newRoot.bundle.x509AuthoritiesPem()] })
    const s = client()
    const manager = createIdentityManager({ source: s })
    await manager.get(API)
    expect(s.bundles.get('cluster.local')!.x509Authorities.map((c) => c.fingerprint256)).toEqual([root.certificate.fingerprint256, newRoot.certificate.fingerprint256])
    // Once the new root is trusted, certificates from the new CA are accepted...
    answer = async (r) => ({ cert_chain: [await sign(r, undefined, newRoot), newRoot.bundle.x509AuthoritiesPem()] })
    const rotated = await manager.rotate(API)
    expect(rotated.certificateChainPem).not.toBe('')
    // ...and the old root leaves the bundle when the CA stops sending it.
    expect(s.bundles.get('cluster.local')!.x509Authorities.map((c) => c.fingerprint256)).toEqual([newRoot.certificate.fingerprint256])
    await manager.close()
  })

  it('reads the newer answer form: roots in root_cert, the chain without them', async () => {
    answer = async (r) => ({ cert_chain: [await sign(r)], root_cert: { ca_cert: [root.bundle.x509AuthoritiesPem()] } })
    const s = client()
    expect((await s.fetch(API, { ttlSeconds: 60 })).id.toString()).toBe(API.toString())
    await s.close()
  })

  it('refuses a leaf whose SAN is not the identity asked for (ztunnel\'s SanError)', async () => {
    answer = async (r) => ({ cert_chain: [await sign(r, 'spiffe://cluster.local/ns/shop/sa/db'), root.bundle.x509AuthoritiesPem()] })
    const s = client()
    expect(reason(await s.fetch(API, { ttlSeconds: 60 }).catch((e: unknown) => e))).toBe('san-mismatch')
    await s.close()
  })

  it('refuses a chain without a root, a leaf for another key, and roots unrelated to the bundle', async () => {
    const s = client()
    answer = async (r) => ({ cert_chain: [await sign(r)] })
    expect(reason(await s.fetch(API, { ttlSeconds: 60 }).catch((e: unknown) => e))).toBe('no-root')
    answer = async () => ({ cert_chain: [(await root.issue(API)).certificateChainPem, root.bundle.x509AuthoritiesPem()] })
    expect(reason(await s.fetch(API, { ttlSeconds: 60 }).catch((e: unknown) => e))).toBe('key-mismatch')
    const stranger = await createCertificateAuthority({ trustDomain: 'cluster.local' })
    answer = async (r) => ({ cert_chain: [await sign(r, undefined, stranger), stranger.bundle.x509AuthoritiesPem()] })
    expect(reason(await s.fetch(API, { ttlSeconds: 60 }).catch((e: unknown) => e))).toBe('untrusted')
    answer = async (r) => ({ cert_chain: [await sign(r, undefined, stranger), root.bundle.x509AuthoritiesPem()] })
    expect(reason(await s.fetch(API, { ttlSeconds: 60 }).catch((e: unknown) => e))).toBe('untrusted')
    answer = async () => ({ cert_chain: [] })
    expect(reason(await s.fetch(API, { ttlSeconds: 60 }).catch((e: unknown) => e))).toBe('malformed')
    await s.close()
  })

  it('reports istiod\'s refusal with its status, and the manager keeps the SVID it has', async () => {
    answer = async (r) => ({ cert_chain: [await sign(r), root.bundle.x509AuthoritiesPem()] })
    const s = client()
    const manager = createIdentityManager({ source: s })
    const held = await manager.get(API)
    answer = async () => Object.assign(new Error('request authenticate failure'), { code: grpc.status.UNAUTHENTICATED, details: 'request authenticate failure', metadata: new grpc.Metadata() })
    const err = await manager.rotate(API).catch((e: unknown) => e)
    expect((err as { cause: { code: string; details: { grpcStatus: string } } }).cause).toMatchObject({ code: CaErrorCode.Refused, details: { grpcStatus: 'UNAUTHENTICATED' } })
    expect(manager.current(API)).toBe(held)
    await manager.close()
  })

  it('refuses a server whose certificate does not name the host it was asked for', async () => {
    answer = async (r) => ({ cert_chain: [await sign(r), root.bundle.x509AuthoritiesPem()] })
    const s = createIstioCaSource({ address: `127.0.0.1:${port}`, trustDomain: 'cluster.local', rootCertificates: root.bundle.x509AuthoritiesPem(), serverIdentity: { serverName: 'istiod.other.svc' }, timeoutMs: 3000 })
    await expect(s.fetch(API, { ttlSeconds: 60 })).rejects.toMatchObject({ code: CaErrorCode.Refused, details: { grpcStatus: 'UNAVAILABLE' } })
    await s.close()
  })

  it('reaches a CA addressed by IP and verified by its SPIFFE ID (no literal address as the TLS server name)', async () => {
    answer = async (r) => ({ cert_chain: [await sign(r), root.bundle.x509AuthoritiesPem()] })
    for (const address of [`127.0.0.1:${port}`, `https://127.0.0.1:${port}`]) {
      const s = createIstioCaSource({ address, trustDomain: 'cluster.local', rootCertificates: root.bundle.x509AuthoritiesPem(), serverIdentity: { spiffeId: 'spiffe://cluster.local/ns/istio-system/sa/istiod' }, timeoutMs: 3000 })
      expect((await s.fetch(API, { ttlSeconds: 60 })).id.toString()).toBe(API.toString())
      await s.close()
    }
  })
})
