import { X509Certificate } from 'node:crypto'
import { beforeAll, describe, expect, it } from 'vitest'
import { isAmbientError } from '@ambientkit/core'
import {
  IdentityErrorCode, SpiffeId, SvidRejectionReason, TrustBundle, createCertificateAuthority, createTrustBundleSet,
  loadCertificateAuthority, verifyX509Svid, type CertificateAuthority, type CertificateChainInput, type TrustBundleSource,
} from '@ambientkit/identity'
import { KeyUsageBit } from '../src/certificate'
import { corruptSignature, craft } from './craft'

function rejection(chain: CertificateChainInput, bundles: TrustBundleSource, now?: Date): string {
  try {
    verifyX509Svid(chain, bundles, now === undefined ? {} : { now })
  } catch (err) {
    expect(isAmbientError(err, IdentityErrorCode.SvidRejected)).toBe(true)
    return (err as { details: { reason: string } }).details.reason
  }
  throw new Error('verification unexpectedly succeeded')
}

let ca: CertificateAuthority
let other: CertificateAuthority

beforeAll(async () => {
  ca = await createCertificateAuthority({ trustDomain: 'example.org' })
  other = await createCertificateAuthority({ trustDomain: 'other.org' })
})

describe('verifyX509Svid', () => {
  it('accepts a good SVID as PEM, DER list and X509Certificate', async () => {
    const svid = await ca.issue('spiffe://example.org/ns/a/sa/b')
    const leaf = new X509Certificate(svid.certificateChainPem)
    expect(verifyX509Svid(svid.certificateChainPem, ca.bundle).toString()).toBe('spiffe://example.org/ns/a/sa/b')
    expect(verifyX509Svid([leaf.raw], [ca.bundle, other.bundle]).toString()).toBe('spiffe://example.org/ns/a/sa/b')
    expect(verifyX509Svid(leaf, createTrustBundleSet([ca.bundle])).toString()).toBe('spiffe://example.org/ns/a/sa/b')
    // A chain that carries the root too.
    expect(verifyX509Svid([leaf, ca.certificate], ca.bundle).toString()).toBe('spiffe://example.org/ns/a/sa/b')
  })

  it('rejects a leaf with no URI SAN', async () => {
    const bad = await craft(ca, { uris: [], subjectCn: 'w' })
    expect(rejection(bad.pem, ca.bundle)).toBe(SvidRejectionReason.NoUriSan)
  })

  it('rejects a leaf with two URI SANs, counted from the DER', async () => {
    const bad = await craft(ca, { uris: ['spiffe://example.org/a', 'spiffe://example.org/b'] })
    expect(rejection(bad.pem, ca.bundle)).toBe(SvidRejectionReason.MultipleUriSans)
  })

  it('rejects a non-spiffe URI SAN', async () => {
    const bad = await craft(ca, { uris: ['https://example.org/w'] })
    expect(rejection(bad.pem, ca.bundle)).toBe(SvidRejectionReason.NotSpiffeUri)
  })

  it('rejects a leaf whose ID is the bare trust domain (root path)', async () => {
    const bad = await craft(ca, { uris: ['spiffe://example.org'] })
    expect(rejection(bad.pem, ca.bundle)).toBe(SvidRejectionReason.RootPath)
  })

  it('rejects a leaf with cA=true', async () => {
    const bad = await craft(ca, { cA: true, keyUsage: [KeyUsageBit.digitalSignature] })
    expect(rejection(bad.pem, ca.bundle)).toBe(SvidRejectionReason.LeafIsCa)
  })

  it('rejects a leaf with keyCertSign', async () => {
    const bad = await craft(ca, { keyUsage: [KeyUsageBit.digitalSignature, KeyUsageBit.keyCertSign] })
    expect(rejection(bad.pem, ca.bundle)).toBe(SvidRejectionReason.LeafKeyCertSign)
  })

  it('rejects a leaf with cRLSign', async () => {
    const bad = await craft(ca, { keyUsage: [KeyUsageBit.digitalSignature, KeyUsageBit.cRLSign] })
    expect(rejection(bad.pem, ca.bundle)).toBe(SvidRejectionReason.LeafCrlSign)
  })

  it('rejects a leaf without digitalSignature', async () => {
    const bad = await craft(ca, { keyUsage: [KeyUsageBit.keyEncipherment] })
    expect(rejection(bad.pem, ca.bundle)).toBe(SvidRejectionReason.LeafNoDigitalSignature)
  })

  it('rejects expired and not-yet-valid leaves', async () => {
    const svid = await ca.issue('spiffe://example.org/w', { ttlSeconds: 60 })
    expect(rejection(svid.certificateChainPem, ca.bundle, new Date(svid.notAfter.getTime() + 1000))).toBe(SvidRejectionReason.Expired)
    expect(rejection(svid.certificateChainPem, ca.bundle, new Date(svid.notBefore.getTime() - 1000))).toBe(SvidRejectionReason.NotYetValid)
    const expired = await craft(ca, { notBefore: new Date(Date.now() - 7_200_000), notAfter: new Date(Date.now() - 3_600_000) })
    expect(rejection(expired.pem, ca.bundle)).toBe(SvidRejectionReason.Expired)
  })

  it('rejects a leaf of a trust domain with no bundle', async () => {
    const svid = await other.issue('spiffe://other.org/w')
    expect(rejection(svid.certificateChainPem, ca.bundle)).toBe(SvidRejectionReason.NoBundle)
    expect(rejection(svid.certificateChainPem, createTrustBundleSet([ca.bundle]))).toBe(SvidRejectionReason.NoBundle)
  })

  it('never falls back to another trust domain\'s roots', async () => {
    // example.org's CA signs an ID of other.org: it chains to a trusted root, but not to other.org's.
    const crossed = await craft(ca, { uris: ['spiffe://other.org/w'] })
    expect(rejection(crossed.pem, createTrustBundleSet([ca.bundle, other.bundle]))).toBe(SvidRejectionReason.Untrusted)
  })

  it('rejects a chain to a different CA of the same trust domain', async () => {
    const rogue = await createCertificateAuthority({ trustDomain: 'example.org' })
    const svid = await rogue.issue('spiffe://example.org/w')
    expect(rejection(svid.certificateChainPem, ca.bundle)).toBe(SvidRejectionReason.Untrusted)
  })

  it('rejects a bad signature on the leaf', async () => {
    const svid = await ca.issue('spiffe://example.org/w')
    const der = new X509Certificate(svid.certificateChainPem).raw
    expect(rejection([corruptSignature(der)], ca.bundle)).toBe(SvidRejectionReason.BadSignature)
  })

  it('rejects a bad signature on an intermediate', async () => {
    const intermediate = await craft(ca, { cA: true, keyUsage: [KeyUsageBit.keyCertSign, KeyUsageBit.cRLSign], uris: ['spiffe://example.org'], subjectCn: 'intermediate' })
    const leaf = await craft(ca, { issuer: { key: intermediate.key, certificate: intermediate.certificate } })
    expect(rejection([leaf.der, corruptSignature(intermediate.der)], ca.bundle)).toBe(SvidRejectionReason.BadSignature)
    expect(verifyX509Svid([leaf.der, intermediate.der], ca.bundle).toString()).toBe('spiffe://example.org/w')
    // Once the leaf is known to chain to the bundle, what is sent along with it no longer matters.
    expect(verifyX509Svid([leaf.der], ca.bundle).toString()).toBe('spiffe://example.org/w')
  })

  it('rejects an intermediate that is not a CA', async () => {
    // keyCertSign but cA=false: only the basicConstraints check can catch it.
    const notCa = await craft(ca, { subjectCn: 'not-a-ca', uris: ['spiffe://example.org/x'], keyUsage: [KeyUsageBit.digitalSignature, KeyUsageBit.keyCertSign] })
    const leaf = await craft(ca, { issuer: { key: notCa.key, certificate: notCa.certificate } })
    expect(rejection([leaf.der, notCa.der], ca.bundle)).toBe(SvidRejectionReason.IntermediateNotCa)
  })

  it('rejects an empty or unreadable chain', () => {
    expect(rejection([], ca.bundle)).toBe(SvidRejectionReason.Malformed)
    expect(rejection([Buffer.from('not a certificate')], ca.bundle)).toBe(SvidRejectionReason.Malformed)
  })

  it('verifies against a bundle read back from JSON', async () => {
    const svid = await ca.issue('spiffe://example.org/w')
    const bundle = TrustBundle.parse('example.org', ca.bundle.toJson())
    expect(verifyX509Svid(svid.certificateChainPem, bundle).equals(SpiffeId.parse('spiffe://example.org/w'))).toBe(true)
  })

  it('does not let a remembered chain outlive its bundle or its validity', async () => {
    const svid = await ca.issue('spiffe://example.org/cached', { ttlSeconds: 60 })
    const set = createTrustBundleSet([ca.bundle])
    expect(verifyX509Svid(svid.certificateChainPem, set).toString()).toBe('spiffe://example.org/cached')
    expect(verifyX509Svid(svid.certificateChainPem, set).toString()).toBe('spiffe://example.org/cached')
    expect(rejection(svid.certificateChainPem, set, new Date(svid.notAfter.getTime() + 1000))).toBe(SvidRejectionReason.Expired)
    // The trust domain's bundle is replaced by one without this CA: the next check must fail.
    const rotatedAway = await createCertificateAuthority({ trustDomain: 'example.org' })
    set.set(rotatedAway.bundle)
    expect(rejection(svid.certificateChainPem, set)).toBe(SvidRejectionReason.Untrusted)
    set.delete('example.org')
    expect(rejection(svid.certificateChainPem, set)).toBe(SvidRejectionReason.NoBundle)
  })

  it('verifies chains of a loaded intermediate', async () => {
    const loaded = loadCertificateAuthority(ca.save())
    const svid = await loaded.issue('spiffe://example.org/w')
    expect(verifyX509Svid(svid.certificateChainPem, ca.bundle).toString()).toBe('spiffe://example.org/w')
  })
})
