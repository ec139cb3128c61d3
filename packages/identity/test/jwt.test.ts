import { execFileSync } from 'node:child_process'
import { generateKeyPairSync, sign } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import {
  IdentityErrorCode, JwtSvidRejectionReason, TrustBundle, createCertificateAuthority, createIdentityManager, createJwtSvidIssuer, createLocalCaSource,
  createTrustBundleSet, verifyJwtSvid,
} from '@ambientkit/identity'

const ID = 'spiffe://example.org/ns/shop/sa/api'

async function setup(): Promise<{ issuer: Awaited<ReturnType<typeof createJwtSvidIssuer>>; bundle: TrustBundle }> {
  const issuer = await createJwtSvidIssuer({ trustDomain: 'example.org' })
  return { issuer, bundle: TrustBundle.create({ trustDomain: 'example.org', jwtAuthorities: [issuer.authority] }) }
}

const reasonOf = (fn: () => unknown): unknown => {
  try {
    fn()
  } catch (err) {
    expect((err as { code: string }).code).toBe(IdentityErrorCode.JwtSvidRejected)
    return (err as { details: { reason: string } }).details.reason
  }
  throw new Error('expected a rejection')
}

const forge = (header: object, claims: object, key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey): string => {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`
  return `${input}.${sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
}

describe('JWT-SVIDs', () => {
  it('signs ES256 tokens with sub, aud, exp, iat and kid that verify against the bundle', async () => {
    const { issuer, bundle } = await setup()
    const svid = issuer.sign(ID, { audience: ['payments'], ttlSeconds: 60 })
    const [header, payload] = svid.token.split('.').slice(0, 2).map((p) => JSON.parse(Buffer.from(p, 'base64url').toString()))
    expect(header).toEqual({ alg: 'ES256', kid: issuer.keyId, typ: 'JWT' })
    expect(payload).toMatchObject({ sub: ID, aud: 'payments' })
    expect(payload.exp - payload.iat).toBe(60)
    const verified = verifyJwtSvid(svid.token, bundle, { audience: 'payments' })
    expect(verified.id.toString()).toBe(ID)
    // The bundle's JWKS carries the key with its kid, and reads back.
    const reread = TrustBundle.parse('example.org', bundle.toJson())
    expect(verifyJwtSvid(svid.token, createTrustBundleSet([reread]), { audience: 'payments' }).id.toString()).toBe(ID)
  })

  it('produces signatures Python\'s cryptography verifies (a stack we did not write)', async () => {
    const { issuer } = await setup()
    const svid = issuer.sign(ID, { audience: ['a', 'b'] })
    const script = `
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives import hashes
jwk, token = json.loads(sys.argv[1]), sys.argv[2]
b = lambda s: base64.urlsafe_b64decode(s + '=' * (-len(s) % 4))
h, p, s = token.split('.')
key = ec.EllipticCurvePublicNumbers(int.from_bytes(b(jwk['x']), 'big'), int.from_bytes(b(jwk['y']), 'big'), ec.SECP256R1()).public_key()
sig = b(s)
key.verify(utils.encode_dss_signature(int.from_bytes(sig[:32], 'big'), int.from_bytes(sig[32:], 'big')), (h + '.' + p).encode(), ec.ECDSA(hashes.SHA256()))
print(json.loads(b(p))['aud'])
`
    const out = execFileSync('/usr/bin/python3', ['-c', script, JSON.stringify(issuer.authority.jwk), svid.token], { encoding: 'utf8' })
    expect(out.trim()).toBe("['a', 'b']")
  })

  it('rejects each broken rule with its reason', async () => {
    const { issuer, bundle } = await setup()
    const good = issuer.sign(ID, { audience: ['payments'] }).token
    expect(reasonOf(() => verifyJwtSvid(good, bundle, { audience: 'other' }))).toBe(JwtSvidRejectionReason.WrongAudience)
    expect(reasonOf(() => verifyJwtSvid(good, bundle, { audience: 'payments', now: new Date(Date.now() + 3600_000) }))).toBe(JwtSvidRejectionReason.Expired)
    expect(reasonOf(() => verifyJwtSvid('a.b', bundle, { audience: 'payments' }))).toBe(JwtSvidRejectionReason.Malformed)
    expect(reasonOf(() => verifyJwtSvid('x'.repeat(20_000), bundle, { audience: 'payments' }))).toBe(JwtSvidRejectionReason.Malformed)
    const [h, p] = good.split('.')
    expect(reasonOf(() => verifyJwtSvid(`${h}.${p}.AAAA`, bundle, { audience: 'payments' }))).toBe(JwtSvidRejectionReason.BadSignature)
    const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${p}.`
    expect(reasonOf(() => verifyJwtSvid(none, bundle, { audience: 'payments' }))).toBe(JwtSvidRejectionReason.UnsupportedAlgorithm)
    const exp = Math.floor(Date.now() / 1000) + 60
    // A key the bundle does not hold, under the bundle's own kid.
    expect(reasonOf(() => verifyJwtSvid(forge({ alg: 'ES256', kid: issuer.keyId }, { sub: ID, aud: 'payments', exp }), bundle, { audience: 'payments' }))).toBe(JwtSvidRejectionReason.BadSignature)
    expect(reasonOf(() => verifyJwtSvid(forge({ alg: 'ES256', kid: 'other' }, { sub: ID, aud: 'payments', exp }), bundle, { audience: 'payments' }))).toBe(JwtSvidRejectionReason.UnknownKey)
    expect(reasonOf(() => verifyJwtSvid(forge({ alg: 'ES256' }, { sub: 'spiffe://example.org', aud: 'payments', exp }), bundle, { audience: 'payments' }))).toBe(JwtSvidRejectionReason.BadSubject)
    // Another trust domain's token is never checked against this bundle's keys.
    const foreign = await createJwtSvidIssuer({ trustDomain: 'other.org', privateKey: issuer.privateKeyPem() })
    expect(reasonOf(() => verifyJwtSvid(foreign.sign('spiffe://other.org/w', { audience: ['payments'] }).token, bundle, { audience: 'payments' }))).toBe(JwtSvidRejectionReason.UnknownKey)
  })

  it('refuses to sign without an audience or for another trust domain', async () => {
    const { issuer } = await setup()
    expect(() => issuer.sign(ID, { audience: [] })).toThrow(/audience/)
    expect(() => issuer.sign('spiffe://other.org/w', { audience: ['a'] })).toThrow(/trust domain example\.org/)
  })

  it('reach workloads through the identity manager, reused until half-life', async () => {
    const ca = await createCertificateAuthority({ trustDomain: 'example.org' })
    const issuer = await createJwtSvidIssuer({ trustDomain: 'example.org' })
    const manager = createIdentityManager({ source: createLocalCaSource(ca, { jwtIssuers: [issuer] }) })
    const first = await manager.fetchJwtSvid(ID, ['payments'])
    expect(await manager.fetchJwtSvid(ID, ['payments'])).toBe(first)
    expect(verifyJwtSvid(first.token, manager.bundles, { audience: 'payments' }).id.toString()).toBe(ID)
    const plain = createIdentityManager({ source: createLocalCaSource(ca) })
    await expect(plain.fetchJwtSvid(ID, ['payments'])).rejects.toMatchObject({ code: IdentityErrorCode.IdentityUnavailable })
    await manager.close()
    await plain.close()
  })
})
