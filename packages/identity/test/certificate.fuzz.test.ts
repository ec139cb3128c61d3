import { execFileSync } from 'node:child_process'
import { X509Certificate, createPrivateKey, generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import forge from 'node-forge'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  IdentityErrorCode,
  SpiffeId,
  createCertificateAuthority,
  createCsr,
  verifyX509Svid,
  type CertificateAuthority,
} from '@ambientkit/identity'
import { KeyUsageBit, OID, buildCertificate, extension, keyIdentifier, keyUsageValue, serialNumber, spkiOf } from '../src/certificate'
import { bool, children, decode, oid, pemEncode, seq } from '../src/der'
import { checkProperty, fuzzTimeout, parseOrRefuse } from '../../../test/support/fuzz'
import { craft } from './craft'

// What the verifier accepts, against the X509-SVID spec and against
// OpenSSL's own command line: leaves our CA signs with every combination of
// the features the spec rules on, and DER mutated from a valid SVID.

const TD = 'example.org'
const REJECTED = [IdentityErrorCode.SvidRejected]

let ca: CertificateAuthority
let caKey: ReturnType<typeof createPrivateKey>
/** Another CA of the same name: what it signs must not pass for our CA's. */
let impostorKey: ReturnType<typeof createPrivateKey>
let caPemFile: string
let dir: string
let validLeaf: Buffer
let validId: SpiffeId

beforeAll(async () => {
  ca = await createCertificateAuthority({ trustDomain: TD })
  caKey = createPrivateKey(ca.save().privateKeyPem)
  impostorKey = createPrivateKey((await createCertificateAuthority({ trustDomain: TD })).save().privateKeyPem)
  dir = mkdtempSync(join(tmpdir(), 'ak-cert-fuzz-'))
  caPemFile = join(dir, 'ca.pem')
  writeFileSync(caPemFile, ca.save().certificateChainPem)
  const svid = await ca.issue(`spiffe://${TD}/ns/shop/sa/api`)
  validLeaf = new X509Certificate(svid.certificateChainPem).raw
  validId = svid.id
})

afterAll(() => rmSync(dir, { recursive: true, force: true }))

/** OpenSSL's verdict on a leaf against the CA: the chain and signature, nothing SPIFFE. */
function opensslVerifies(der: Buffer): boolean {
  const file = join(dir, 'leaf.der')
  writeFileSync(file, der)
  try {
    const pem = execFileSync('openssl', ['x509', '-inform', 'DER', '-in', file], { stdio: ['ignore', 'pipe', 'ignore'] })
    writeFileSync(join(dir, 'leaf.pem'), pem)
    execFileSync('openssl', ['verify', '-CAfile', caPemFile, join(dir, 'leaf.pem')], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** OpenSSL's verdict on a leaf through an intermediate it is given as untrusted. */
function opensslVerifiesChain(leaf: Buffer, intermediate: Buffer): boolean {
  writeFileSync(join(dir, 'chain-leaf.pem'), pemEncode('CERTIFICATE', leaf))
  writeFileSync(join(dir, 'chain-intermediate.pem'), pemEncode('CERTIFICATE', intermediate))
  try {
    execFileSync('openssl', ['verify', '-CAfile', caPemFile, '-untrusted', join(dir, 'chain-intermediate.pem'), join(dir, 'chain-leaf.pem')], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** OpenSSL's reading of the URIs in the leaf's subjectAltName. */
function opensslUris(der: Buffer): string[] {
  const file = join(dir, 'san.der')
  writeFileSync(file, der)
  const text = execFileSync('openssl', ['x509', '-inform', 'DER', '-in', file, '-noout', '-ext', 'subjectAltName'], { encoding: 'utf8' })
  return [...text.matchAll(/URI:([^,\n]*)/g)].map((m) => m[1]!)
}

/** A GeneralName (RFC 5280 §4.2.1.6) of the given type. */
type GeneralName = { readonly type: 'uri' | 'dns' | 'email' | 'ip' | 'registered'; readonly value: string }

function generalName(name: GeneralName): forge.asn1.Asn1 {
  const ctx = forge.asn1.Class.CONTEXT_SPECIFIC
  switch (name.type) {
    case 'uri':
      return forge.asn1.create(ctx, 6, false, name.value)
    case 'dns':
      return forge.asn1.create(ctx, 2, false, name.value)
    case 'email':
      return forge.asn1.create(ctx, 1, false, name.value)
    case 'ip':
      return forge.asn1.create(ctx, 7, false, '\x0a\x00\x00\x01')
    case 'registered':
      return forge.asn1.create(ctx, 8, false, forge.asn1.oidToDer('1.2.3.4').getBytes())
  }
}

interface LeafFeatures {
  readonly names: readonly GeneralName[]
  readonly cA: boolean | undefined
  readonly keyUsage: readonly number[] | undefined
  /** Validity relative to now, in seconds. */
  readonly notBefore: number
  readonly notAfter: number
  /** Signed by our CA, or by another key under our CA's name. */
  readonly signer: 'ca' | 'impostor'
}

const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey
const intermediateKey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey

function buildLeaf(f: LeafFeatures): Buffer {
  const spki = spkiOf(key)
  const now = Date.now()
  const extensions = [extension(OID.subjectKeyIdentifier, false, decode(Buffer.concat([Buffer.of(0x04, 20), keyIdentifier(spki)])))]
  if (f.cA !== undefined) extensions.push(extension(OID.basicConstraints, true, seq(f.cA ? [bool(true)] : [])))
  if (f.keyUsage !== undefined) extensions.push(extension(OID.keyUsage, true, keyUsageValue([...f.keyUsage])))
  extensions.push(extension(OID.extKeyUsage, false, seq([oid(OID.serverAuth), oid(OID.clientAuth)])))
  if (f.names.length > 0) extensions.push(extension(OID.subjectAltName, true, seq(f.names.map(generalName))))
  return buildCertificate({
    serial: serialNumber(),
    issuer: children(children(decode(ca.certificate.raw))[0])[5]!,
    subject: seq([]),
    notBefore: new Date(now + f.notBefore * 1000),
    notAfter: new Date(now + f.notAfter * 1000),
    subjectPublicKey: spki,
    extensions,
    signingKey: f.signer === 'ca' ? caKey : impostorKey,
  })
}

/** The X509-SVID spec's verdict on a leaf our CA signed: the ID, or every rule it breaks. */
function specVerdict(f: LeafFeatures): { id: string } | { reasons: Set<string> } {
  const reasons = new Set<string>()
  const uris = f.names.filter((n) => n.type === 'uri').map((n) => n.value)
  // §2: exactly one URI SAN; §3.1: a leaf's ID has a path; §5.1: validated against its own trust domain's bundle.
  if (uris.length === 0) reasons.add('no-uri-san')
  if (uris.length > 1) reasons.add('multiple-uri-sans')
  const id = uris.length === 1 ? SpiffeId.tryParse(uris[0]!) : undefined
  if (uris.length === 1 && id === undefined) reasons.add('not-spiffe-uri')
  if (id !== undefined && id.path === '') reasons.add('root-path')
  if (id !== undefined && id.trustDomain.name !== TD) reasons.add('no-bundle')
  // §4.1, §4.3: leaves are not CAs, sign with digitalSignature, never keyCertSign or cRLSign.
  if (f.cA === true) reasons.add('leaf-is-ca')
  if (f.keyUsage?.includes(KeyUsageBit.keyCertSign)) reasons.add('leaf-key-cert-sign')
  if (f.keyUsage?.includes(KeyUsageBit.cRLSign)) reasons.add('leaf-crl-sign')
  if (f.keyUsage?.includes(KeyUsageBit.digitalSignature) !== true) reasons.add('leaf-no-digital-signature')
  if (f.notBefore > 0) reasons.add('not-yet-valid')
  if (f.notAfter < 0) reasons.add('expired')
  // §5.1: the chain must verify up to an authority of the bundle.
  if (f.signer === 'impostor') reasons.add('bad-signature').add('untrusted')
  return reasons.size === 0 ? { id: id!.toString() } : { reasons }
}

const uriArb = fc.oneof(
  fc.constantFrom(`spiffe://${TD}/ns/a/sa/b`, `spiffe://${TD}/w`, `spiffe://${TD}`, 'spiffe://other.org/w', `spiffe://${TD}/a/../b`, `SPIFFE://${TD}/w`, `https://${TD}/w`, `spiffe://${TD}/w, URI:spiffe://${TD}/x`, ''),
  fc.string({ maxLength: 20 }).map((s) => `spiffe://${TD}/${s}`),
)
const nameArb: fc.Arbitrary<GeneralName> = fc.oneof(
  { weight: 3, arbitrary: uriArb.map((value) => ({ type: 'uri' as const, value })) },
  { weight: 1, arbitrary: fc.constantFrom<GeneralName>({ type: 'dns', value: 'api.example.org' }, { type: 'email', value: 'a@example.org' }, { type: 'ip', value: '10.0.0.1' }, { type: 'registered', value: '1.2.3.4' }, { type: 'dns', value: `spiffe://${TD}/w` }) },
)
const featuresArb: fc.Arbitrary<LeafFeatures> = fc.record({
  names: fc.array(nameArb, { maxLength: 3 }),
  cA: fc.constantFrom(undefined, false, true),
  keyUsage: fc.option(fc.subarray([KeyUsageBit.digitalSignature, KeyUsageBit.keyEncipherment, KeyUsageBit.keyCertSign, KeyUsageBit.cRLSign], { minLength: 1 }), { nil: undefined, freq: 5 }),
  notBefore: fc.constantFrom(-60, -60, -60, 3600),
  notAfter: fc.constantFrom(3600, 3600, 3600, -1),
  signer: fc.constantFrom<LeafFeatures['signer']>('ca', 'ca', 'ca', 'impostor'),
})

describe('X.509-SVID verification fuzzing', () => {
  it('accepts exactly the leaves the X509-SVID spec allows, and OpenSSL reads the same chain and URI', async () => {
    await checkProperty('identity: verifyX509Svid (signed leaves, spec rules)', fc.property(featuresArb, (features) => {
      const der = buildLeaf(features)
      const verdict = specVerdict(features)
      const result = parseOrRefuse(REJECTED, () => verifyX509Svid(der, ca.bundle))
      if ('id' in verdict) {
        if (!result.ok) throw new Error(`refused a leaf the spec allows: ${JSON.stringify(features)}`)
        expect(result.value.toString()).toBe(verdict.id)
        expect(opensslVerifies(der)).toBe(true)
        expect(opensslUris(der)).toEqual([verdict.id])
        return
      }
      if (result.ok) throw new Error(`accepted a leaf the spec refuses (${[...verdict.reasons].join(', ')}): ${JSON.stringify(features)}`)
      try {
        verifyX509Svid(der, ca.bundle)
      } catch (err) {
        expect([...verdict.reasons]).toContain((err as { details: { reason: string } }).details.reason)
      }
    }), 150)
  }, fuzzTimeout(60_000))

  it('accepts a chain through an intermediate exactly when it is a CA allowed to sign, as OpenSSL does', async () => {
    const intermediateArb = fc.record({
      cA: fc.boolean(),
      keyUsage: fc.subarray([KeyUsageBit.digitalSignature, KeyUsageBit.keyCertSign, KeyUsageBit.cRLSign], { minLength: 1 }),
      expired: fc.constantFrom(false, false, false, true),
      signer: fc.constantFrom<'ca' | 'impostor'>('ca', 'ca', 'ca', 'impostor'),
    })
    await checkProperty('identity: verifyX509Svid (chains through an intermediate)', fc.asyncProperty(intermediateArb, async (f) => {
      const intermediate = await craft(ca, {
        cA: f.cA, keyUsage: [...f.keyUsage], uris: [`spiffe://${TD}`], subjectCn: 'intermediate', key: intermediateKey,
        ...(f.expired ? { notBefore: new Date(Date.now() - 7200_000), notAfter: new Date(Date.now() - 3600_000) } : {}),
        ...(f.signer === 'impostor' ? { issuer: { key: impostorKey, certificate: ca.certificate } } : {}),
      })
      const leaf = await craft(ca, { uris: [`spiffe://${TD}/w`], key, issuer: { key: intermediate.key, certificate: intermediate.certificate } })
      // RFC 5280 §4.2.1.9, §6.1.4 (k), (n): a signing certificate is a CA, and if it has key usage, keyCertSign.
      const allowed = f.cA && f.keyUsage.includes(KeyUsageBit.keyCertSign) && !f.expired && f.signer === 'ca'
      const result = parseOrRefuse(REJECTED, () => verifyX509Svid([leaf.der, intermediate.der], ca.bundle))
      expect(result.ok, `intermediate ${JSON.stringify(f)}`).toBe(allowed)
      expect(opensslVerifiesChain(leaf.der, intermediate.der)).toBe(allowed)
    }), 30)
  }, fuzzTimeout(60_000))

  it('never accepts a valid SVID with flipped bits, cut short or with bytes inserted, unless OpenSSL accepts it as the same certificate', async () => {
    const mutation = fc.oneof(
      fc.array(fc.tuple(fc.nat(), fc.nat({ max: 7 })), { minLength: 1, maxLength: 4 }).map((flips) => ({ kind: 'flip' as const, flips })),
      fc.nat().map((at) => ({ kind: 'truncate' as const, at })),
      fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 4 })).map(([at, bytes]) => ({ kind: 'insert' as const, at, bytes })),
    )
    await checkProperty('identity: verifyX509Svid (mutated DER)', fc.property(mutation, (m) => {
      let der = Buffer.from(validLeaf)
      if (m.kind === 'flip') for (const [at, bit] of m.flips) der[at % der.length]! ^= 1 << bit
      else if (m.kind === 'truncate') der = der.subarray(0, m.at % der.length)
      else der = Buffer.concat([der.subarray(0, m.at % der.length), m.bytes, der.subarray(m.at % der.length)])
      const result = parseOrRefuse(REJECTED, () => verifyX509Svid(der, ca.bundle))
      if (!result.ok || der.equals(validLeaf)) return
      // Accepted: OpenSSL must agree the signature holds, and the identity cannot have changed.
      expect(result.value.equals(validId)).toBe(true)
      expect(opensslVerifies(der)).toBe(true)
    }), 1000)
  }, fuzzTimeout(60_000))

  it('refuses PEM and chains of anything with ERR_AMBIENT_SVID_REJECTED only', async () => {
    const pem = pemEncode('CERTIFICATE', validLeaf)
    const input = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.tuple(fc.nat(), fc.string({ maxLength: 8 })).map(([at, s]) => pem.slice(0, at % pem.length) + s + pem.slice(at % pem.length)),
      fc.array(fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)), { maxLength: 3 }),
    )
    await checkProperty('identity: verifyX509Svid (arbitrary chains)', fc.property(input, (chain) => {
      parseOrRefuse(REJECTED, () => verifyX509Svid(chain, ca.bundle))
    }), 500)
  }, fuzzTimeout(30_000))
})

describe('CSR fuzzing', () => {
  it('signs a CSR only when it is intact and names exactly the requested ID', async () => {
    const id = `spiffe://${TD}/ns/shop/sa/api`
    const pem = createCsr({ id, privateKey: key })
    const body = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64')
    const mutation = fc.oneof(
      fc.constant(undefined),
      fc.array(fc.tuple(fc.nat(), fc.nat({ max: 7 })), { minLength: 1, maxLength: 3 }),
    )
    const requested = fc.constantFrom(id, `spiffe://${TD}/ns/shop/sa/other`)
    await checkProperty('identity: signCsr (mutated CSRs)', fc.asyncProperty(mutation, requested, async (flips, want) => {
      const der = Buffer.from(body)
      for (const [at, bit] of flips ?? []) der[at % der.length]! ^= 1 << bit
      const mutated = pemEncode('CERTIFICATE REQUEST', der)
      let signed: Awaited<ReturnType<CertificateAuthority['signCsr']>> | undefined
      try {
        signed = await ca.signCsr(mutated, { id: want })
      } catch (err) {
        parseOrRefuse([IdentityErrorCode.CsrRejected], () => {
          throw err
        })
      }
      if (signed === undefined) return
      // Signed: the CSR still proves possession of our key, and the certificate names what was asked.
      expect(signed.id.toString()).toBe(want)
      expect(want).toBe(id)
      expect(new X509Certificate(signed.certificateChainPem).checkPrivateKey(key)).toBe(true)
    }), 300)
  }, fuzzTimeout(60_000))
})
