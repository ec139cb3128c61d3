import { generateKeyPairSync } from 'node:crypto'
import { beforeAll, describe, expect, it } from 'vitest'
import { isAmbientError } from '@ambientkit/core'
import { IdentityErrorCode, TrustBundle, createCertificateAuthority, createTrustBundleSet, type CertificateAuthority } from '@ambientkit/identity'

let ca: CertificateAuthority
let rsa: CertificateAuthority
beforeAll(async () => {
  ca = await createCertificateAuthority({ trustDomain: 'example.org' })
  rsa = await createCertificateAuthority({ trustDomain: 'example.org', keyType: 'rsa-2048' })
})

const jwtKey = (): Record<string, unknown> => ({ ...generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({ format: 'jwk' }), use: 'jwt-svid', kid: 'key-1' })

function x509Key(c: CertificateAuthority): Record<string, unknown> {
  return (c.bundle.toJwks().keys as Record<string, unknown>[])[0]!
}

function invalidBundle(json: unknown): string {
  try {
    TrustBundle.parse('example.org', json as object)
  } catch (err) {
    expect(isAmbientError(err, IdentityErrorCode.InvalidBundle)).toBe(true)
    return (err as Error).message
  }
  throw new Error('bundle unexpectedly accepted')
}

describe('TrustBundle (SPIFFE bundle format)', () => {
  it('round-trips X.509 and JWT authorities, sequence and refresh hint', () => {
    const jwt = jwtKey()
    const bundle = TrustBundle.parse('example.org', { keys: [x509Key(ca), x509Key(rsa), jwt], spiffe_sequence: 7, spiffe_refresh_hint: 300 })
    expect(bundle.x509Authorities.map((c) => c.fingerprint256)).toEqual([ca.certificate.fingerprint256, rsa.certificate.fingerprint256])
    expect(bundle.jwtAuthorities).toHaveLength(1)
    expect(bundle.jwtAuthorities[0]!.keyId).toBe('key-1')
    expect(bundle.sequenceNumber).toBe(7)
    expect(bundle.refreshHintSeconds).toBe(300)
    const again = TrustBundle.parse('example.org', bundle.toJson())
    expect(again.toJson()).toBe(bundle.toJson())
    const doc = JSON.parse(bundle.toJson()) as { keys: Array<Record<string, unknown>> }
    expect(doc.keys[0]).toMatchObject({ use: 'x509-svid', kty: 'EC', crv: 'P-256' })
    expect(doc.keys[0]!.x5c).toHaveLength(1)
    expect(doc.keys[1]).toMatchObject({ use: 'x509-svid', kty: 'RSA' })
    expect(doc.keys[2]).toMatchObject({ use: 'jwt-svid', kid: 'key-1' })
  })

  it('ignores keys with an unknown use or key type', () => {
    const bundle = TrustBundle.parse('example.org', { keys: [x509Key(ca), { kty: 'EC', use: 'future-svid' }, { kty: 'PQC', use: 'x509-svid' }] })
    expect(bundle.x509Authorities).toHaveLength(1)
  })

  // Found by fuzzing: Node reads a certificate's key lazily, so an x5c whose
  // key OpenSSL cannot decode threw a raw ERR_OSSL_EVP_DECODE_ERROR from parse.
  it('refuses an authority whose public key cannot be decoded', () => {
    const der = Buffer.from(ca.certificate.raw)
    // The uncompressed EC point of the key (BIT STRING of 66 bytes, 0 unused bits, 0x04) made undecodable.
    const point = der.indexOf(Buffer.of(0x03, 0x42, 0x00, 0x04))
    der[point + 3] = 0x05
    const entry: Record<string, unknown> = { ...x509Key(ca), x5c: [der.toString('base64')] }
    delete entry.x
    delete entry.y
    expect(invalidBundle({ keys: [entry] })).toMatch(/readable public key/)
    expect(() => TrustBundle.create({ trustDomain: 'example.org', x509Authorities: [der] })).toThrow(expect.objectContaining({ code: IdentityErrorCode.InvalidCertificate }))
  })

  it('writes a PEM of its authorities for Node tls', () => {
    const bundle = TrustBundle.create({ trustDomain: 'example.org', x509Authorities: [ca.certificate, rsa.certificate.raw] })
    expect(TrustBundle.fromPem('example.org', bundle.x509AuthoritiesPem()).x509Authorities).toHaveLength(2)
  })

  it.each<[string, unknown, RegExp]>([
    ['not JSON', '{', /not JSON/],
    ['not an object', '[]', /JSON object/],
    ['no keys', {}, /"keys" must be an array/],
    ['a key that is not an object', { keys: [1] }, /keys\[0\] must be a JSON object/],
    ['a key without kty', { keys: [{ use: 'x509-svid' }] }, /no "kty"/],
    ['a key without use', { keys: [{ kty: 'EC' }] }, /no "use"/],
    ['x509-svid without x5c', { keys: [{ kty: 'EC', use: 'x509-svid' }] }, /exactly one certificate/],
    ['x509-svid with two x5c', 'two-x5c', /exactly one certificate/],
    ['x509-svid with garbage x5c', { keys: [{ kty: 'EC', use: 'x509-svid', x5c: ['AAAA'] }] }, /not a base64 DER certificate/],
    ['x509-svid with base64url x5c', 'url-x5c', /not a base64 DER certificate/],
    ['x509-svid whose key does not match its certificate', 'mismatch', /does not match the public key/],
    ['jwt-svid without kid', 'no-kid', /non-empty "kid"/],
    ['x509-svid with a kid', 'x509-kid', /must not have a "kid"/],
    ['jwt-svid with a bad key', { keys: [{ kty: 'EC', use: 'jwt-svid', kid: 'k', crv: 'P-256', x: 'AA', y: 'AA' }] }, /not a valid public JWK/],
    ['negative sequence', { keys: [], spiffe_sequence: -1 }, /spiffe_sequence/],
    ['fractional refresh hint', { keys: [], spiffe_refresh_hint: 1.5 }, /spiffe_refresh_hint/],
  ])('rejects %s', (_name, input, message) => {
    let json = input
    if (input === 'two-x5c') json = { keys: [{ ...x509Key(ca), x5c: [...(x509Key(ca).x5c as string[]), ...(x509Key(rsa).x5c as string[])] }] }
    if (input === 'url-x5c') json = { keys: [{ ...x509Key(ca), x5c: [(x509Key(ca).x5c as string[])[0]!.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '') + '-_'] }] }
    if (input === 'mismatch') json = { keys: [{ ...x509Key(ca), x: x509Key(rsa).n }] }
    if (input === 'x509-kid') json = { keys: [{ ...x509Key(ca), kid: 'k' }] }
    if (input === 'no-kid') json = { keys: [{ ...jwtKey(), kid: undefined }] }
    expect(invalidBundle(json)).toMatch(message)
  })
})

describe('TrustBundleSet', () => {
  it('keys bundles by trust domain and notifies changes', () => {
    const set = createTrustBundleSet([ca.bundle])
    const changes: string[] = []
    const off = set.subscribe((change) => changes.push(`${change.trustDomain.name}:${change.type === 'bundle-deleted' ? 'deleted' : 'set'}`))
    expect(set.get('example.org')).toBe(ca.bundle)
    set.set(TrustBundle.create({ trustDomain: 'other.org', x509Authorities: [rsa.certificate] }))
    expect(set.delete('other.org')).toBe(true)
    expect(set.delete('other.org')).toBe(false)
    off()
    set.set(ca.bundle)
    expect(changes).toEqual(['other.org:set', 'other.org:deleted'])
    expect(set.all()).toHaveLength(1)
  })

  it('counts its changes in generation, and nothing else', () => {
    const set = createTrustBundleSet([ca.bundle])
    expect(set.generation).toBe(0)
    set.set(TrustBundle.create({ trustDomain: 'other.org', x509Authorities: [rsa.certificate] }))
    expect(set.generation).toBe(1)
    set.get('other.org')
    set.all()
    expect(set.delete('nowhere.org')).toBe(false)
    expect(set.generation).toBe(1)
    set.delete('other.org')
    expect(set.generation).toBe(2)
  })
})
