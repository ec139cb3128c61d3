import { X509Certificate, createHash } from 'node:crypto'
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

// Bundle authorities are parsed once; bundles are immutable and hold the same objects.
const authorityCache = new WeakMap<X509Certificate, ParsedCertificate>()

function parsedAuthority(cert: X509Certificate): ParsedCertificate {
  let parsed = authorityCache.get(cert)
  if (parsed === undefined) {
    parsed = parseCertificate(cert.raw)
    authorityCache.set(cert, parsed)
  }
  return parsed
}

/**
 * Leaves already verified, so a peer that reconnects with the same SVID (the
 * common case: an SVID lives for hours) costs a hash, not a parse and a
 * signature check. An entry holds only while the bundle it was verified
 * against is still the one in force (bundles are immutable, so a replaced
 * bundle is a different object) and `now` is inside every certificate's validity.
 */
interface VerifiedChain {
  id: SpiffeId
  bundle: TrustBundle
  notBefore: number
  notAfter: number
}
const MAX_VERIFIED = 4096
const verifiedChains = new Map<string, VerifiedChain>()

// Keyed by the leaf alone: once a leaf is known to chain to a bundle, the
// certificates sent along with it later cannot change that.
function leafKey(leafDer: Buffer): string {
  return createHash('sha256').update(leafDer).digest('base64')
}

function lookup(ders: Buffer[], bundles: TrustBundleSource, now: Date): SpiffeId | undefined {
  if (ders.length === 0) return undefined
  const key = leafKey(ders[0]!)
  const entry = verifiedChains.get(key)
  if (entry === undefined) return undefined
  const t = now.getTime()
  if (t < entry.notBefore || t > entry.notAfter || bundleFor(bundles, entry.id) !== entry.bundle) return undefined
  // Map order is insertion order: re-inserting makes eviction least-recently-used.
  verifiedChains.delete(key)
  verifiedChains.set(key, entry)
  return entry.id
}

function remember(ders: Buffer[], entry: VerifiedChain): void {
  verifiedChains.set(leafKey(ders[0]!), entry)
  if (verifiedChains.size > MAX_VERIFIED) verifiedChains.delete(verifiedChains.keys().next().value!)
}

function checkTime(cert: ParsedCertificate, now: Date, role: string): void {
  if (now < cert.notBefore) throw svidRejected(SvidRejectionReason.NotYetValid, `the ${role} is not valid before ${cert.notBefore.toISOString()}`, { role })
  if (now > cert.notAfter) throw svidRejected(SvidRejectionReason.Expired, `the ${role} expired at ${cert.notAfter.toISOString()}`, { role })
}

/** Reads and checks the leaf's SPIFFE ID and key usage (X509-SVID §2, §3.1, §4, §5.2). */
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
  // X509-SVID §3.1, §5.2: a leaf's ID has a non-root path; the bare trust domain ID is for signing certificates.
  if (id.path === '') throw svidRejected(SvidRejectionReason.RootPath, `the leaf's SPIFFE ID ${uri} has no path (X509-SVID §3.1)`, { id: uri })
  // X509-SVID §4.1, §5.2: leaf basicConstraints cA MUST be false.
  if (leaf.cA === true) throw svidRejected(SvidRejectionReason.LeafIsCa, 'the leaf has cA=true (X509-SVID §4.1)', { id: uri })
  // X509-SVID §4.3, §5.2: leaf keyUsage MUST have digitalSignature and MUST NOT have keyCertSign or cRLSign.
  if (leaf.keyUsage?.has(KeyUsageBit.keyCertSign) === true) throw svidRejected(SvidRejectionReason.LeafKeyCertSign, 'the leaf has keyUsage keyCertSign (X509-SVID §4.3)', { id: uri })
  if (leaf.keyUsage?.has(KeyUsageBit.cRLSign) === true) throw svidRejected(SvidRejectionReason.LeafCrlSign, 'the leaf has keyUsage cRLSign (X509-SVID §4.3)', { id: uri })
  if (leaf.keyUsage?.has(KeyUsageBit.digitalSignature) !== true) throw svidRejected(SvidRejectionReason.LeafNoDigitalSignature, 'the leaf lacks keyUsage digitalSignature (X509-SVID §4.3)', { id: uri })
  return id
}

/**
 * Verifies an X.509-SVID chain (leaf first) per the X509-SVID spec and
 * returns the leaf's SPIFFE ID. The chain must lead, through CA
 * intermediates it carries, to an X.509 authority of the bundle of the
 * leaf's **own** trust domain (X509-SVID §5.1; Trust Domain and Bundle §6.4); other domains' roots are
 * never tried. Rejections throw `ERR_AMBIENT_SVID_REJECTED` with
 * `details.reason` one of {@link SvidRejectionReason}.
 */
export function verifyX509Svid(chain: CertificateChainInput, bundles: TrustBundleSource, options: VerifyX509SvidOptions = {}): SpiffeId {
  const now = options.now ?? new Date()
  let ders: Buffer[]
  let certs: ParsedCertificate[]
  try {
    ders = toDerList(chain)
    const cached = lookup(ders, bundles, now)
    if (cached !== undefined) return cached
    certs = ders.map(parseCertificate)
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
  const path: ParsedCertificate[] = [leaf]
  const trusted = (): SpiffeId => {
    remember(ders, { id, bundle, notBefore: Math.max(...path.map((c) => c.notBefore.getTime())), notAfter: Math.min(...path.map((c) => c.notAfter.getTime())) })
    return id
  }
  let current = leaf
  let sawBadSignature = false
  // Each step consumes one intermediate, so the walk ends after at most chain-length steps.
  for (let step = 0; step < certs.length; step++) {
    if (authorities.some((a) => a.raw.equals(current.der))) return trusted()
    for (const authority of authorities) {
      if (!current.x509.checkIssued(authority)) continue
      if (!current.x509.verify(authority.publicKey)) {
        sawBadSignature = true
        continue
      }
      const anchor = parsedAuthority(authority)
      checkTime(anchor, now, 'trust bundle authority')
      path.push(anchor)
      return trusted()
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
    path.push(issuer)
    current = issuer
  }
  if (sawBadSignature) throw svidRejected(SvidRejectionReason.BadSignature, `a signature does not verify with the key of an authority of ${id.trustDomain.name}`, { id: id.toString() })
  throw svidRejected(SvidRejectionReason.Untrusted, `the chain does not lead to an X.509 authority of trust domain ${id.trustDomain.name}`, { id: id.toString() })
}
