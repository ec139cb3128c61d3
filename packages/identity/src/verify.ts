import { X509Certificate } from 'node:crypto'
import { AmbientError } from '@ambientkit/core'
import { pemDecode } from './der'
import { KeyUsageBit, parseCertificate, type ParsedCertificate } from './certificate'
import { IdentityErrorCode, SvidRejectionReason, svidRejected } from './errors'
import { TrustBundle, type TrustBundleSet } from './bundle'
import { SpiffeId } from './spiffe-id'

/** A certificate chain, leaf first: PEM text, one DER buffer (the leaf alone), or a list of DER buffers / `X509Certificate`s. */
export type CertificateChainInput = string | Buffer | X509Certificate | ReadonlyArray<Buffer | X509Certificate>

/** Trust bundles to verify against: a set (federation), one bundle, or a list. */
export type TrustBundleSource = TrustBundleSet | TrustBundle | Iterable<TrustBundle>

/** Options of {@link verifyX509Svid}. */
export interface VerifyX509SvidOptions {
  /** The time at which every certificate must be valid. Default: now. */
  now?: Date
}

function toDerList(chain: CertificateChainInput): Buffer[] {
  if (typeof chain === 'string') return pemDecode(chain, 'CERTIFICATE')
  if (chain instanceof X509Certificate) return [chain.raw]
  if (Buffer.isBuffer(chain)) return [chain]
  return chain.map((c) => (c instanceof X509Certificate ? c.raw : c))
}

function bundleFor(bundles: TrustBundleSource, id: SpiffeId): TrustBundle | undefined {
  if (bundles instanceof TrustBundle) return bundles.trustDomain.equals(id.trustDomain) ? bundles : undefined
  if ('get' in bundles && typeof bundles.get === 'function' && 'subscribe' in bundles) return bundles.get(id.trustDomain)
  for (const b of bundles as Iterable<TrustBundle>) if (b.trustDomain.equals(id.trustDomain)) return b
  return undefined
}

function checkTime(cert: ParsedCertificate, now: Date, role: string): void {
  if (now < cert.notBefore) throw svidRejected(SvidRejectionReason.NotYetValid, `the ${role} is not valid before ${cert.notBefore.toISOString()}`, { role })
  if (now > cert.notAfter) throw svidRejected(SvidRejectionReason.Expired, `the ${role} expired at ${cert.notAfter.toISOString()}`, { role })
}

/** Reads and checks the leaf's SPIFFE ID and key usage (X509-SVID §2, §4). */
export function leafSpiffeId(leaf: ParsedCertificate): SpiffeId {
  // X509-SVID §2: exactly one URI SAN. Counted from the DER extension: Node's
  // subjectAltName string can be ambiguous when a URI contains ", ".
  if (leaf.uris.length === 0) throw svidRejected(SvidRejectionReason.NoUriSan, 'the leaf has no URI SAN (X509-SVID §2)')
  if (leaf.uris.length > 1) throw svidRejected(SvidRejectionReason.MultipleUriSans, `the leaf has ${leaf.uris.length} URI SANs, exactly one is allowed (X509-SVID §2)`, { uris: leaf.uris })
  const uri = leaf.uris[0]!
  let id: SpiffeId
  try {
    id = SpiffeId.parse(uri)
  } catch (cause) {
    const err = svidRejected(SvidRejectionReason.NotSpiffeUri, `the leaf's URI SAN ${JSON.stringify(uri)} is not a SPIFFE ID: ${(cause as Error).message}`, { uri })
    throw new AmbientError(err.code, err.message, { cause, details: err.details })
  }
  // X509-SVID §2: a leaf's ID has a path; the bare trust domain ID is for signing certificates.
  if (id.path === '') throw svidRejected(SvidRejectionReason.RootPath, `the leaf's SPIFFE ID ${uri} has no path (X509-SVID §2)`, { id: uri })
  // X509-SVID §4.1: leaf basicConstraints cA MUST be false.
  if (leaf.cA === true) throw svidRejected(SvidRejectionReason.LeafIsCa, 'the leaf has cA=true (X509-SVID §4.1)', { id: uri })
  // X509-SVID §4.3: leaf keyUsage MUST have digitalSignature and MUST NOT have keyCertSign or cRLSign.
  if (leaf.keyUsage?.has(KeyUsageBit.keyCertSign) === true) throw svidRejected(SvidRejectionReason.LeafKeyCertSign, 'the leaf has keyUsage keyCertSign (X509-SVID §4.3)', { id: uri })
  if (leaf.keyUsage?.has(KeyUsageBit.cRLSign) === true) throw svidRejected(SvidRejectionReason.LeafCrlSign, 'the leaf has keyUsage cRLSign (X509-SVID §4.3)', { id: uri })
  if (leaf.keyUsage?.has(KeyUsageBit.digitalSignature) !== true) throw svidRejected(SvidRejectionReason.LeafNoDigitalSignature, 'the leaf lacks keyUsage digitalSignature (X509-SVID §4.3)', { id: uri })
  return id
}

/**
 * Verifies an X.509-SVID chain (leaf first) per the X509-SVID spec and
 * returns the leaf's SPIFFE ID. The chain must lead, through CA
 * intermediates it carries, to an X.509 authority of the bundle of the
 * leaf's **own** trust domain (X509-SVID §5.2); other domains' roots are
 * never tried. Rejections throw `ERR_AMBIENT_SVID_REJECTED` with
 * `details.reason` one of {@link SvidRejectionReason}.
 */
export function verifyX509Svid(chain: CertificateChainInput, bundles: TrustBundleSource, options: VerifyX509SvidOptions = {}): SpiffeId {
  const now = options.now ?? new Date()
  let certs: ParsedCertificate[]
  try {
    certs = toDerList(chain).map(parseCertificate)
  } catch (cause) {
    throw new AmbientError(IdentityErrorCode.SvidRejected, 'X.509-SVID rejected (malformed): a certificate of the chain cannot be read', {
      cause, details: { reason: SvidRejectionReason.Malformed },
    })
  }
  const leaf = certs[0]
  if (leaf === undefined) throw svidRejected(SvidRejectionReason.Malformed, 'the chain is empty')
  const id = leafSpiffeId(leaf)
  const bundle = bundleFor(bundles, id)
  if (bundle === undefined || bundle.x509Authorities.length === 0) {
    throw svidRejected(SvidRejectionReason.NoBundle, `no X.509 authorities are known for trust domain ${id.trustDomain.name}`, { id: id.toString() })
  }
  checkTime(leaf, now, 'leaf')
  const authorities = bundle.x509Authorities
  const intermediates = certs.slice(1)
  let current = leaf
  let sawBadSignature = false
  // Each step consumes one intermediate, so the walk ends after at most chain-length steps.
  for (let step = 0; step < certs.length; step++) {
    if (authorities.some((a) => a.raw.equals(current.der))) return id
    for (const authority of authorities) {
      if (!current.x509.checkIssued(authority)) continue
      if (!current.x509.verify(authority.publicKey)) {
        sawBadSignature = true
        continue
      }
      checkTime(parseCertificate(authority.raw), now, 'trust bundle authority')
      return id
    }
    const issuerIndex = intermediates.findIndex((c) => current.x509.checkIssued(c.x509))
    if (issuerIndex < 0) break
    const issuer = intermediates.splice(issuerIndex, 1)[0]!
    if (!current.x509.verify(issuer.x509.publicKey)) {
      throw svidRejected(SvidRejectionReason.BadSignature, `the signature of ${current === leaf ? 'the leaf' : `intermediate ${current.x509.subject}`} does not verify with its issuer's key`, { id: id.toString() })
    }
    // X509-SVID §4.1: every signing certificate has cA=true.
    if (issuer.cA !== true) throw svidRejected(SvidRejectionReason.IntermediateNotCa, `intermediate ${issuer.x509.subject} is not a CA`, { id: id.toString() })
    checkTime(issuer, now, 'intermediate')
    current = issuer
  }
  if (sawBadSignature) throw svidRejected(SvidRejectionReason.BadSignature, `a signature does not verify with the key of an authority of ${id.trustDomain.name}`, { id: id.toString() })
  throw svidRejected(SvidRejectionReason.Untrusted, `the chain does not lead to an X.509 authority of trust domain ${id.trustDomain.name}`, { id: id.toString() })
}
