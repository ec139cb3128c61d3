import { generateKeyPairSync, type X509Certificate } from 'node:crypto'
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import { IdentityErrorCode, TrustBundle, createCertificateAuthority } from '@ambientkit/identity'
import { checkProperty, fuzzTimeout, parseOrRefuse } from '../../../test/support/fuzz'

// SPIFFE bundles (SPIFFE Trust Domain and Bundle §4: a JWKS) generated from
// the spec, then corrupted, then arbitrary JSON.

const CODES = [IdentityErrorCode.InvalidBundle]
let authorities: X509Certificate[]
const jwtKeys = [
  generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({ format: 'jwk' }),
  generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).publicKey.export({ format: 'jwk' }),
  generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ format: 'jwk' }),
  generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' }),
]

beforeAll(async () => {
  authorities = await Promise.all([createCertificateAuthority({ trustDomain: 'example.org' }), createCertificateAuthority({ trustDomain: 'example.org', keyType: 'rsa-2048' })]).then((cas) => cas.map((ca) => ca.certificate))
})

/** A key entry of the bundle spec: an x509-svid authority (§4.2.1, X509-SVID §6.1), a jwt-svid key (JWT-SVID §6.1), or one with a type or use a reader ignores. */
const keyArb = fc.oneof(
  fc.tuple(fc.nat(), fc.boolean()).map(([i, withParams]) => ({ kind: 'x509' as const, i, withParams })),
  fc.tuple(fc.nat(), fc.string({ minLength: 1, maxLength: 12 })).map(([i, kid]) => ({ kind: 'jwt' as const, i, kid })),
  fc.constantFrom({ kind: 'ignored' as const, entry: { kty: 'oct', use: 'x509-svid', k: 'AAAA' } }, { kind: 'ignored' as const, entry: { kty: 'EC', use: 'enc', crv: 'P-256' } }),
)

const documentArb = fc.record({
  keys: fc.array(keyArb, { maxLength: 4 }),
  sequence: fc.option(fc.nat(), { nil: undefined }),
  refresh: fc.option(fc.nat(), { nil: undefined }),
})

function render(doc: { keys: Array<{ kind: string; i?: number; withParams?: boolean; kid?: string; entry?: object }>; sequence?: number; refresh?: number }): Record<string, unknown> {
  const keys = doc.keys.map((k) => {
    if (k.kind === 'x509') {
      const cert = authorities[k.i! % authorities.length]!
      return { ...(k.withParams ? cert.publicKey.export({ format: 'jwk' }) : { kty: cert.publicKey.asymmetricKeyType === 'rsa' ? 'RSA' : 'EC' }), use: 'x509-svid', x5c: [cert.raw.toString('base64')] }
    }
    if (k.kind === 'jwt') return { ...jwtKeys[k.i! % jwtKeys.length], use: 'jwt-svid', kid: k.kid }
    return k.entry!
  })
  return { keys, ...(doc.sequence === undefined ? {} : { spiffe_sequence: doc.sequence }), ...(doc.refresh === undefined ? {} : { spiffe_refresh_hint: doc.refresh }) }
}

/** Sets a path in a JSON value to any value. */
function corruptAt(value: unknown, path: number[], junk: unknown): unknown {
  if (path.length === 0 || typeof value !== 'object' || value === null) return junk
  const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v] as const) : Object.entries(value)
  if (entries.length === 0) return junk
  const at = path[0]! % entries.length
  const next = entries.map(([k, v], i) => [k, i === at ? corruptAt(v, path.slice(1), junk) : v] as const)
  return Array.isArray(value) ? next.map(([, v]) => v) : Object.fromEntries(next)
}

describe('SPIFFE bundle fuzzing', () => {
  it('reads every bundle the spec allows and round-trips it', async () => {
    await checkProperty('identity: TrustBundle.parse (spec grammar)', fc.property(documentArb, (doc) => {
      const json = render(doc)
      const result = parseOrRefuse(CODES, () => TrustBundle.parse('example.org', JSON.stringify(json)))
      if (!result.ok) throw new Error(`refused a valid bundle: ${JSON.stringify(json).slice(0, 300)}`)
      const bundle = result.value
      expect(bundle.x509Authorities).toHaveLength(doc.keys.filter((k) => k.kind === 'x509').length)
      expect(bundle.jwtAuthorities).toHaveLength(doc.keys.filter((k) => k.kind === 'jwt').length)
      expect(bundle.sequenceNumber).toBe(doc.sequence)
      expect(bundle.refreshHintSeconds).toBe(doc.refresh)
      const again = TrustBundle.parse('example.org', bundle.toJson())
      expect(again.toJwks()).toEqual(bundle.toJwks())
    }), 300)
  }, fuzzTimeout(30_000))

  it('refuses corrupted bundles and any JSON with ERR_AMBIENT_INVALID_BUNDLE only', async () => {
    const input = fc.oneof(
      fc.tuple(documentArb, fc.array(fc.nat(), { maxLength: 4 }), fc.jsonValue({ maxDepth: 2 })).map(([doc, path, junk]) => JSON.stringify(corruptAt(render(doc), path, junk))),
      fc.tuple(documentArb, fc.nat(), fc.string({ maxLength: 4 })).map(([doc, at, s]) => {
        const text = JSON.stringify(render(doc))
        return text.slice(0, at % text.length) + s + text.slice((at % text.length) + s.length)
      }),
      fc.json({ maxDepth: 3 }),
      fc.anything().map((v) => v as object),
    )
    await checkProperty('identity: TrustBundle.parse (corrupted)', fc.property(input, (json) => {
      parseOrRefuse(CODES, () => TrustBundle.parse('example.org', json as string))
    }), 1000)
  }, fuzzTimeout(30_000))
})
