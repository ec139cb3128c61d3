import { execFileSync } from 'node:child_process'
import { X509Certificate, generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { isAmbientError } from '@ambientkit/core'
import { SpiffeId, createIdentityManager, verifyJwtSvid } from '@ambientkit/identity'
import { CaErrorCode, createIstioCaSource, createNodeCredentialAuthenticator, type IstioCaSourceOptions } from '@ambientkit/ca'
import { caServices, stringStruct, type IstioCertificateResponse } from '../src/proto'
import { CA_HOST, startTestCa, type TestCa } from './support'

const dir = mkdtempSync(join(tmpdir(), 'ak-ca-'))
let t: TestCa
beforeAll(async () => {
  t = await startTestCa()
})
afterAll(async () => {
  await t.close()
  rmSync(dir, { recursive: true, force: true })
})

const API = SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/api')
const DB = SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/db')

function source(token: string | undefined, extra: Partial<IstioCaSourceOptions> = {}): ReturnType<typeof createIstioCaSource> {
  return createIstioCaSource({
    address: t.address,
    trustDomain: 'cluster.local',
    rootCertificates: t.rootsPem,
    serverIdentity: { serverName: CA_HOST },
    ...(token === undefined ? {} : { token }),
    ...extra,
  })
}

async function fetchWith(token: string | undefined, id: SpiffeId, extra: Partial<IstioCaSourceOptions> = {}, ttlSeconds = 600): Promise<Awaited<ReturnType<ReturnType<typeof createIstioCaSource>['fetch']>>> {
  const s = source(token, extra)
  try {
    return await s.fetch(id, { ttlSeconds })
  } finally {
    await s.close()
  }
}

/** The refusal a call got: gRPC status name and text, and the audit line it left. */
async function refusal(token: string | undefined, id: SpiffeId, extra: Partial<IstioCaSourceOptions> = {}): Promise<{ status: string; message: string; reason: string | undefined }> {
  const before = t.audit.length
  const err = await fetchWith(token, id, extra).then(() => undefined, (e: unknown) => e)
  expect(isAmbientError(err, CaErrorCode.Refused)).toBe(true)
  const details = (err as { details: { grpcStatus: string } }).details
  const line = t.audit.slice(before).find((e) => e.event === 'refused')
  return { status: details.grpcStatus, message: ((err as { cause: grpc.ServiceError }).cause).details, reason: line?.reason }
}

function opensslVerify(chainPem: string, rootsPem: string): string {
  const [leaf, ...rest] = chainPem.split(/(?<=-----END CERTIFICATE-----\n)/)
  writeFileSync(join(dir, 'roots.pem'), rootsPem)
  writeFileSync(join(dir, 'leaf.pem'), leaf!)
  writeFileSync(join(dir, 'untrusted.pem'), rest.join('') || rootsPem)
  return execFileSync('openssl', ['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', join(dir, 'roots.pem'), '-untrusted', join(dir, 'untrusted.pem'), join(dir, 'leaf.pem')], { encoding: 'utf8' })
}

describe('CA service: Istio\'s certificate API', () => {
  it('issues a node agent the SVID of a pod on its node, with the audit line naming both', async () => {
    const svid = await fetchWith('node-1-agent', API)
    expect(svid.id.toString()).toBe(API.toString())
    expect(new X509Certificate(svid.certificateChainPem).subjectAltName).toBe(`URI:${API.toString()}`)
    expect(opensslVerify(svid.certificateChainPem, t.rootsPem)).toMatch(/leaf\.pem: OK/)
    const line = t.audit.findLast((e) => e.event === 'issued')!
    expect(line).toMatchObject({
      method: 'CreateCertificate',
      requested: API.toString(),
      impersonation: true,
      caller: { identity: 'spiffe://cluster.local/ns/ambientkit-system/sa/ambientkit-node', method: 'kubernetes-token', node: 'node-1', pod: 'ambientkit-system/ambientkit-node-7xk2p' },
    })
    expect(line.serial).toBe(new X509Certificate(svid.certificateChainPem).serialNumber)
  })

  it('answers in Istio\'s form: each certificate one element ending in a newline, the roots last', async () => {
    const client = new (caServices().IstioCertificateService)(t.address, grpc.credentials.createSsl(Buffer.from(t.rootsPem)), { 'grpc.ssl_target_name_override': CA_HOST })
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    const { createCsr } = await import('@ambientkit/identity')
    const md = new grpc.Metadata()
    md.set('authorization', 'Bearer node-1-agent')
    const response = await new Promise<IstioCertificateResponse>((resolve, reject) =>
      (client as unknown as { CreateCertificate: (r: object, m: grpc.Metadata, cb: (e: Error | null, r: IstioCertificateResponse) => void) => void })
        .CreateCertificate({ csr: createCsr({ id: API, privateKey }), validity_duration: 60, metadata: stringStruct({ ImpersonatedIdentity: API.toString() }) }, md, (e, r) => (e ? reject(e) : resolve(r))))
    client.close()
    expect(response.cert_chain).toHaveLength(2)
    for (const element of response.cert_chain) expect(element).toMatch(/^-----BEGIN CERTIFICATE-----\n[\s\S]+-----END CERTIFICATE-----\n$/)
    expect(response.cert_chain[1]).toBe(t.rootsPem)
  })

  it('gives a pod\'s own token its own identity, and nothing else', async () => {
    expect((await fetchWith('shop-api', API, { impersonate: false })).id.toString()).toBe(API.toString())
    // Asking for its own identity through the impersonation field is the same request.
    expect((await fetchWith('shop-api', API)).id.toString()).toBe(API.toString())
    const other = await refusal('shop-api', DB)
    expect(other).toMatchObject({ status: 'UNAUTHENTICATED', message: 'request impersonation authentication failure' })
    expect(other.reason).toMatch(/spiffe:\/\/cluster\.local\/ns\/shop\/sa\/api is not a trusted node account/)
  })

  it('refuses a node agent a pod scheduled on another node, telling the reason only to the audit log', async () => {
    const r = await refusal('node-1-agent', DB)
    expect(r).toEqual({ status: 'UNAUTHENTICATED', message: 'request impersonation authentication failure', reason: 'no pod of shop/db, not Failed, is scheduled on node node-1' })
    expect(t.audit.findLast((e) => e.event === 'refused')).toMatchObject({ requested: DB.toString(), impersonation: true, caller: { node: 'node-1' } })
  })

  it('refuses a pod that is Failed, an identity of no pod, and an identity not of the trust domain', async () => {
    expect((await refusal('node-1-agent', SpiffeId.parse('spiffe://cluster.local/ns/billing/sa/batch'))).reason).toMatch(/no pod of billing\/batch, not Failed/)
    expect((await refusal('node-1-agent', SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/ghost'))).reason).toMatch(/no pod of shop\/ghost/)
    expect((await refusal('node-1-agent', SpiffeId.parse('spiffe://other.org/ns/shop/sa/api'))).reason).toMatch(/not of trust domain cluster\.local/)
  })

  it('refuses impersonation on a token not bound to a pod, or bound to a pod that no longer exists', async () => {
    expect((await refusal('node-agent-unbound', API)).reason).toMatch(/caller's node is unknown/)
    const stale = await refusal('node-1-agent-stale-pod', API)
    expect(stale).toMatchObject({ status: 'UNAUTHENTICATED', message: 'request authenticate failure' })
    expect(stale.reason).toMatch(/no longer exists/)
  })

  it.each([
    ['expired', /service account token has expired/],
    ['forged', /error in cryptographic primitive/],
    ['wrong-audience', /invalid for the target audiences \["istio-ca"\]/],
  ])('refuses a token that is %s as unauthenticated, the TokenReview error in the audit log only', async (token, reason) => {
    const r = await refusal(token, API)
    expect(r.status).toBe('UNAUTHENTICATED')
    expect(r.message).toBe('request authenticate failure')
    expect(r.reason).toMatch(reason)
  })

  it('refuses a caller without any credential', async () => {
    const r = await refusal(undefined, API)
    expect(r).toMatchObject({ status: 'UNAUTHENTICATED', message: 'request authenticate failure', reason: 'no credential any authenticator accepts' })
  })

  it('reviews a token once, then reuses the review (pod lists for a while too)', async () => {
    const count = (): number => t.kubernetes.requests.filter((r) => r.startsWith('POST /apis/authentication.k8s.io')).length
    const s = source('node-1-agent')
    await s.fetch(API, { ttlSeconds: 60 })
    const reviews = count()
    for (let i = 0; i < 5; i++) await s.fetch(API, { ttlSeconds: 60 })
    await s.close()
    expect(count()).toBe(reviews)
  })

  it('certifies the authorized identity only, whatever SANs the CSR names, and refuses weak keys', async () => {
    const call = async (csr: string): Promise<{ err: grpc.ServiceError | null; response: IstioCertificateResponse | undefined }> => {
      const client = new (caServices().IstioCertificateService)(t.address, grpc.credentials.createSsl(Buffer.from(t.rootsPem)), { 'grpc.ssl_target_name_override': CA_HOST })
      const md = new grpc.Metadata()
      md.set('authorization', 'Bearer node-1-agent')
      return new Promise((resolve) => (client as unknown as { CreateCertificate: (r: object, m: grpc.Metadata, cb: (e: grpc.ServiceError | null, r: IstioCertificateResponse) => void) => void })
        .CreateCertificate({ csr, validity_duration: 60, metadata: stringStruct({ ImpersonatedIdentity: API.toString() }) }, md, (err, response) => {
          client.close()
          resolve({ err, response })
        }))
    }
    const keyFile = join(dir, 'csr.key')
    execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', keyFile], { stdio: 'ignore' })
    const req = (san: string, key = keyFile): string => execFileSync('openssl', ['req', '-new', '-key', key, '-subj', '/CN=admin', '-addext', `subjectAltName=${san}`], { encoding: 'utf8' })
    for (const san of ['URI:spiffe://cluster.local/ns/shop/sa/api,URI:spiffe://cluster.local/ns/kube-system/sa/admin', 'URI:spiffe://cluster.local/ns/kube-system/sa/admin,DNS:kubernetes.default']) {
      const { err, response } = await call(req(san))
      expect(err).toBeNull()
      const leaf = new X509Certificate(response!.cert_chain[0]!)
      expect(leaf.subjectAltName).toBe(`URI:${API.toString()}`)
      expect(leaf.subject ?? '').toBe('')
    }
    const weakKey = join(dir, 'weak.key')
    execFileSync('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024', '-out', weakKey], { stdio: 'ignore' })
    const before = t.audit.length
    const { err } = await call(req('URI:spiffe://cluster.local/ns/shop/sa/api', weakKey))
    expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT)
    expect(err?.details).toBe('CSR signing error')
    expect(t.audit.slice(before)).toEqual([expect.objectContaining({ event: 'refused', status: 'INVALID_ARGUMENT', requested: API.toString(), reason: expect.stringMatching(/its key is RSA-1024/) })])
    const garbage = await call('not a CSR')
    expect(garbage.err?.code).toBe(grpc.status.INVALID_ARGUMENT)
  })

  it('clamps a lifetime over the maximum, and gives the default to one of zero', async () => {
    const long = await fetchWith('node-1-agent', API, {}, 30 * 86_400)
    expect(long.notAfter.getTime() - Date.now()).toBeLessThanOrEqual(3600_000 + 2000)
    expect(long.notAfter.getTime() - Date.now()).toBeGreaterThan(3590_000)
    expect(t.audit.findLast((e) => e.event === 'issued')).toMatchObject({ requestedTtlSeconds: 30 * 86_400 })
    const zero = await fetchWith('node-1-agent', API, {}, 0)
    expect(zero.notAfter.getTime() - Date.now()).toBeGreaterThan(3590_000)
  })

  it('renews for a caller that authenticates with its current SVID over mutual TLS', async () => {
    const first = await fetchWith('shop-api', API, { impersonate: false })
    const renewed = await fetchWith(undefined, API, { impersonate: false, clientSvid: () => first })
    expect(renewed.id.toString()).toBe(API.toString())
    expect(t.audit.findLast((e) => e.event === 'issued')).toMatchObject({ caller: { identity: API.toString(), method: 'svid' } })
    // An SVID never impersonates: it has no node.
    expect((await refusal(undefined, DB, { clientSvid: () => first })).reason).toMatch(/not a trusted node account/)
  })

  it('mints JWT-SVIDs under the same rule and streams the bundles they verify with', async () => {
    const s = source('node-1-agent', { watchBundles: true })
    const manager = createIdentityManager({ source: s })
    await new Promise<void>((resolve) => {
      const off = s.bundles.subscribe(() => {
        if (s.bundles.get('cluster.local')?.jwtAuthorities.length) {
          off()
          resolve()
        }
      })
    })
    const jwt = await manager.fetchJwtSvid(API, ['payments'])
    expect(verifyJwtSvid(jwt.token, t.bundles, { audience: 'payments' }).id.toString()).toBe(API.toString())
    await expect(manager.fetchJwtSvid(DB, ['payments'])).rejects.toThrow(/request impersonation authentication failure/)
    await manager.close()
  })

  it('serves TLS only: a plaintext client gets nothing', async () => {
    const client = new (caServices().IstioCertificateService)(t.address, grpc.credentials.createInsecure())
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      (client as unknown as { CreateCertificate: (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError) => void) => void }).CreateCertificate({}, { deadline: Date.now() + 2000 }, resolve))
    client.close()
    expect([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.INTERNAL]).toContain(err.code)
  })
})

describe('CA service: local node credentials', () => {
  it('lets a node credential impersonate pods of its node only', async () => {
    const nodes = [{ node: 'node-1', credential: 'c2VjcmV0LW9mLW5vZGUtMQ' }, { node: 'node-2', credential: 'c2VjcmV0LW9mLW5vZGUtMg' }]
    const local = await startTestCa({
      authenticators: [createNodeCredentialAuthenticator({ nodes, identity: 'spiffe://cluster.local/ns/ambientkit-system/sa/ambientkit-node' })],
    })
    try {
      const s = createIstioCaSource({ address: local.address, trustDomain: 'cluster.local', rootCertificates: local.rootsPem, serverIdentity: { serverName: CA_HOST }, token: nodes[1]!.credential })
      expect((await s.fetch(DB, { ttlSeconds: 60 })).id.toString()).toBe(DB.toString())
      await expect(s.fetch(API, { ttlSeconds: 60 })).rejects.toThrow(/request impersonation authentication failure/)
      await s.close()
      expect(local.audit.map((e) => [e.event, e.caller?.node, e.requested])).toEqual([['issued', 'node-2', DB.toString()], ['refused', 'node-2', API.toString()]])
      const wrong = createIstioCaSource({ address: local.address, trustDomain: 'cluster.local', rootCertificates: local.rootsPem, serverIdentity: { serverName: CA_HOST }, token: 'guess' })
      await expect(wrong.fetch(DB, { ttlSeconds: 60 })).rejects.toThrow(/request authenticate failure/)
      await wrong.close()
    } finally {
      await local.close()
    }
  })
})


