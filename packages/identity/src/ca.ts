import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto'
import forge from 'node-forge'
import { AmbientError, invalidArgument, throwIfAborted, type AbortOptions } from '@ambientkit/core'
import { children, decode, oid, pemDecode, pemEncode, seq } from './der'
import {
  KeyUsageBit, MIN_RSA_BITS, OID, buildCertificate, describeKey, extension, generateKey, keyIdentifier, keyTypeOf, keyUsageValue, name,
  parseCertificate, serialNumber, spkiOf, subjectAltNameValue, type KeyType,
} from './certificate'
import { parseCsr } from './csr'
import { IdentityErrorCode, invalidCertificate } from './errors'
import { TrustBundle } from './bundle'
import { SpiffeId, TrustDomain } from './spiffe-id'

/**
 * An X.509-SVID with its private key: what a workload presents in TLS.
 */
export interface X509Svid {
  /** The SPIFFE ID in the leaf's URI SAN. */
  readonly id: SpiffeId
  /** PEM certificates, leaf first, then intermediates up to (not including) the root. */
  readonly certificateChainPem: string
  /** The leaf's private key, PKCS#8 PEM. */
  readonly privateKeyPem: string
  /** Start of the leaf's validity (backdated a few seconds for clock skew). */
  readonly notBefore: Date
  /** End of the leaf's validity. */
  readonly notAfter: Date
}

/** A certificate issued for a workload-held key (see {@link CertificateAuthority.signCsr}). */
export type SignedCertificate = Omit<X509Svid, 'privateKeyPem'>

/** Options of {@link CertificateAuthority.issue}. */
export interface IssueOptions extends AbortOptions {
  /** Lifetime of the SVID in seconds, capped at the CA's own expiry. Default 3600. */
  ttlSeconds?: number
  /** Key type of the SVID's key. Default: the CA's key type. */
  keyType?: KeyType
  /**
   * DNS names to add beside the SPIFFE ID (X509-SVID §2 allows other SAN
   * types): for a server that clients also reach by name, such as a CA
   * service or a bundle endpoint. Default none.
   */
  dnsNames?: readonly string[]
}

/** Options of {@link CertificateAuthority.signCsr}. */
export interface SignCsrOptions extends AbortOptions {
  /** The ID to certify: the only URI SAN of the certificate. */
  id: SpiffeId | string
  /** Lifetime in seconds, capped at the CA's own expiry. Default 3600. */
  ttlSeconds?: number
  /**
   * What the CSR's own URI SANs must be. `'exact'` (default): exactly `id`,
   * else `ERR_AMBIENT_CSR_REJECTED`. `'ignore'`: they are not read at all,
   * as Istio's CA does, for a caller whose identity was established otherwise
   * (the certificate still names only `id`).
   */
  csrSans?: 'exact' | 'ignore'
}

/** ECDSA curves a CA may certify, by their NIST names. */
export type EcdsaCurve = 'P-256' | 'P-384' | 'P-521'

/**
 * Which workload keys a CA certifies from CSRs. A key outside it is refused
 * with `ERR_AMBIENT_CSR_REJECTED` before the CSR's signature is checked.
 */
export interface CsrKeyPolicy {
  /** Smallest RSA modulus, in bits; at least 2048. Default 2048 (NIST SP 800-131A). */
  minRsaBits?: number
  /** Largest RSA modulus, in bits: bigger keys only cost every peer more time. Default 8192. */
  maxRsaBits?: number
  /** ECDSA curves. Default `['P-256', 'P-384']`; `[]` refuses ECDSA. */
  ecdsaCurves?: readonly EcdsaCurve[]
}

/** A CA in PEM form, as written by {@link CertificateAuthority.save} and read by {@link loadCertificateAuthority}. */
export interface CertificateAuthorityPem {
  /** The CA certificate first, then its issuers up to the root. */
  certificateChainPem: string
  /** The CA's private key, PKCS#8 PEM. */
  privateKeyPem: string
}

/** A certificate authority that issues X.509-SVIDs of one trust domain. */
export interface CertificateAuthority {
  readonly trustDomain: TrustDomain
  readonly keyType: KeyType
  /** The CA's own certificate. */
  readonly certificate: X509Certificate
  /** End of the CA certificate's validity; no SVID outlives it. */
  readonly notAfter: Date
  /** The trust bundle of the trust domain: the root of this CA's chain. */
  readonly bundle: TrustBundle
  /** Generates a key and issues an X.509-SVID for `id` (which must be in the CA's trust domain). */
  issue(id: SpiffeId | string, options?: IssueOptions): Promise<X509Svid>
  /**
   * Certifies a workload-held key from a PEM PKCS#10 CSR. Refused with
   * `ERR_AMBIENT_CSR_REJECTED` when the CSR's signature is invalid or its
   * URI SAN is not exactly `options.id`.
   */
  signCsr(csrPem: string, options: SignCsrOptions): Promise<SignedCertificate>
  /** The CA's certificate chain and private key as PEM, to store and later {@link loadCertificateAuthority}. */
  save(): CertificateAuthorityPem
}

/** Options of {@link createCertificateAuthority}. */
export interface CreateCertificateAuthorityOptions extends AbortOptions {
  /** The trust domain, a {@link TrustDomain} or its name. */
  trustDomain: TrustDomain | string
  /** Key type of the CA and, by default, of its SVIDs. Default `'ecdsa-p256'`. */
  keyType?: KeyType
  /** Lifetime of the root certificate in seconds. Default ten years. */
  ttlSeconds?: number
  /** Organization of the root's subject. Default `'ambientkit'`. */
  organization?: string
  /** Which keys {@link CertificateAuthority.signCsr} certifies. Default: P-256, P-384 and RSA of 2048 to 8192 bits. */
  csrKeyPolicy?: CsrKeyPolicy
}

/** Options of {@link loadCertificateAuthority}. */
export interface LoadCertificateAuthorityOptions extends CertificateAuthorityPem {
  /** The trust domain; default: read from the CA certificate's `spiffe://<td>` URI SAN. */
  trustDomain?: TrustDomain | string
  /** Which keys {@link CertificateAuthority.signCsr} certifies. Default: P-256, P-384 and RSA of 2048 to 8192 bits. */
  csrKeyPolicy?: CsrKeyPolicy
}

// Clock skew between nodes: a fresh SVID must already be valid on a peer whose clock is a little behind.
const BACKDATE_SECONDS = 10
const DEFAULT_SVID_TTL_SECONDS = 3600
const DEFAULT_CA_TTL_SECONDS = 10 * 365 * 24 * 3600

const KEY_TYPES: readonly KeyType[] = ['ecdsa-p256', 'rsa-2048']

function checkTtl(name: string, ttl: unknown): number {
  if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl < 1) throw invalidArgument(name, ttl, 'a number of seconds >= 1')
  return Math.floor(ttl)
}

const ECDSA_CURVES: readonly EcdsaCurve[] = ['P-256', 'P-384', 'P-521']

interface ResolvedKeyPolicy {
  minRsaBits: number
  maxRsaBits: number
  ecdsaCurves: ReadonlySet<string>
}

function resolveKeyPolicy(policy: CsrKeyPolicy = {}): ResolvedKeyPolicy {
  const minRsaBits = policy.minRsaBits ?? MIN_RSA_BITS
  const maxRsaBits = policy.maxRsaBits ?? 8192
  if (!Number.isInteger(minRsaBits) || minRsaBits < MIN_RSA_BITS) throw invalidArgument('csrKeyPolicy.minRsaBits', minRsaBits, `an integer >= ${MIN_RSA_BITS}`)
  if (!Number.isInteger(maxRsaBits) || maxRsaBits < minRsaBits) throw invalidArgument('csrKeyPolicy.maxRsaBits', maxRsaBits, `an integer >= minRsaBits (${minRsaBits})`)
  const curves = policy.ecdsaCurves ?? ['P-256', 'P-384']
  if (!Array.isArray(curves) || curves.some((c) => !ECDSA_CURVES.includes(c))) throw invalidArgument('csrKeyPolicy.ecdsaCurves', curves, `a list of ${ECDSA_CURVES.join(', ')}`)
  return { minRsaBits, maxRsaBits, ecdsaCurves: new Set(curves) }
}

function describePolicy(policy: ResolvedKeyPolicy): string {
  const curves = [...policy.ecdsaCurves].map((c) => `ECDSA ${c}`)
  return [...curves, `RSA of ${policy.minRsaBits} to ${policy.maxRsaBits} bits`].join(', ')
}

/** Refuses a CSR key outside the policy, naming the key and what is accepted. */
function checkCsrKey(key: KeyObject, policy: ResolvedKeyPolicy): void {
  const description = describeKey(key)
  const ok = description.algorithm === 'rsa'
    ? description.bits! >= policy.minRsaBits && description.bits! <= policy.maxRsaBits
    : description.algorithm === 'ec' && policy.ecdsaCurves.has(description.curve!)
  if (!ok) {
    throw new AmbientError(IdentityErrorCode.CsrRejected, `CSR refused: its key is ${description.text}; this CA certifies ${describePolicy(policy)}`, {
      details: { key: description.text },
    })
  }
}

function checkKeyType(keyType: unknown): KeyType {
  if (!KEY_TYPES.includes(keyType as KeyType)) throw invalidArgument('keyType', keyType, `one of ${KEY_TYPES.join(', ')}`)
  return keyType as KeyType
}

// RFC 1035 §2.3.1 labels (letters, digits, hyphens; 63 bytes), 253 bytes in all; a leading "*." for a wildcard.
const DNS_NAME = /^(\*\.)?(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/

function checkDnsNames(names: readonly string[] | undefined): readonly string[] {
  if (names === undefined) return []
  if (!Array.isArray(names) || names.some((n) => typeof n !== 'string' || !DNS_NAME.test(n))) {
    throw invalidArgument('dnsNames', names, 'a list of DNS names (letters, digits, hyphens and dots)')
  }
  return names
}

const wholeSeconds = (ms: number): Date => new Date(Math.floor(ms / 1000) * 1000)

/** Creates a CA with a new self-signed root for `trustDomain`. */
export async function createCertificateAuthority(options: CreateCertificateAuthorityOptions): Promise<CertificateAuthority> {
  throwIfAborted(options.signal, 'createCertificateAuthority')
  const trustDomain = typeof options.trustDomain === 'string' ? TrustDomain.parse(options.trustDomain) : options.trustDomain
  const keyType = checkKeyType(options.keyType ?? 'ecdsa-p256')
  const ttl = checkTtl('ttlSeconds', options.ttlSeconds ?? DEFAULT_CA_TTL_SECONDS)
  const { privateKey: key, spki } = await generateKey(keyType)
  throwIfAborted(options.signal, 'createCertificateAuthority')
  const keyId = keyIdentifier(spki)
  const subject = name([
    { oid: OID.organization, value: options.organization ?? 'ambientkit' },
    { oid: OID.commonName, value: trustDomain.name },
  ])
  const now = Date.now()
  const der = buildCertificate({
    serial: serialNumber(),
    issuer: subject,
    subject,
    notBefore: wholeSeconds(now - BACKDATE_SECONDS * 1000),
    notAfter: wholeSeconds(now + ttl * 1000),
    subjectPublicKey: spki,
    // X509-SVID §3.2, §4.1, §4.3: a signing certificate has cA=true, keyCertSign (cRLSign allowed)
    // and, as an SVID itself, the path-less ID of its trust domain.
    extensions: [
      extension(OID.basicConstraints, true, seq([forge.asn1.create(forge.asn1.Class.UNIVERSAL, forge.asn1.Type.BOOLEAN, false, '\xff')])),
      extension(OID.keyUsage, true, keyUsageValue([KeyUsageBit.keyCertSign, KeyUsageBit.cRLSign])),
      extension(OID.subjectAltName, false, subjectAltNameValue(trustDomain.id().toString(), [])),
      extension(OID.subjectKeyIdentifier, false, octetString(keyId)),
      extension(OID.authorityKeyIdentifier, false, authorityKeyId(keyId)),
    ],
    signingKey: key,
  })
  return new LocalCertificateAuthority(trustDomain, key, [new X509Certificate(der)], resolveKeyPolicy(options.csrKeyPolicy))
}

/**
 * Uses an existing root or intermediate CA (PEM certificate chain, CA first,
 * and its private key). The last certificate of the chain becomes the trust
 * bundle's authority.
 */
export function loadCertificateAuthority(options: LoadCertificateAuthorityOptions): CertificateAuthority {
  let chain: X509Certificate[]
  let key: KeyObject
  try {
    chain = pemDecode(options.certificateChainPem, 'CERTIFICATE').map((der) => new X509Certificate(der))
  } catch (cause) {
    throw invalidCertificate('certificateChainPem: expected PEM CERTIFICATE blocks', cause)
  }
  if (chain.length === 0) throw invalidCertificate('certificateChainPem: no CERTIFICATE block found')
  try {
    key = createPrivateKey(options.privateKeyPem)
  } catch (cause) {
    throw invalidCertificate('privateKeyPem: expected a PEM private key', cause)
  }
  const ca = chain[0]!
  if (!ca.checkPrivateKey(key)) throw invalidCertificate('privateKeyPem does not match the first certificate of certificateChainPem')
  const parsed = parseCertificate(ca.raw)
  if (parsed.cA !== true || (parsed.keyUsage !== undefined && !parsed.keyUsage.has(KeyUsageBit.keyCertSign))) {
    throw invalidCertificate('the first certificate of certificateChainPem is not a CA (needs cA=true and keyCertSign, X509-SVID §4.1)')
  }
  let trustDomain: TrustDomain
  if (options.trustDomain !== undefined) {
    trustDomain = typeof options.trustDomain === 'string' ? TrustDomain.parse(options.trustDomain) : options.trustDomain
  } else {
    const ids = parsed.uris.map((uri) => SpiffeId.tryParse(uri)).filter((id) => id !== undefined)
    if (ids.length !== 1) throw invalidCertificate('the CA certificate has no single spiffe:// URI SAN; pass trustDomain')
    trustDomain = ids[0]!.trustDomain
  }
  keyTypeOf(key)
  return new LocalCertificateAuthority(trustDomain, key, chain, resolveKeyPolicy(options.csrKeyPolicy))
}

function octetString(bytes: Buffer): forge.asn1.Asn1 {
  return forge.asn1.create(forge.asn1.Class.UNIVERSAL, forge.asn1.Type.OCTETSTRING, false, bytes.toString('binary'))
}

/** RFC 5280 §4.2.1.1: AuthorityKeyIdentifier with keyIdentifier [0]. */
function authorityKeyId(keyId: Buffer): forge.asn1.Asn1 {
  return seq([forge.asn1.create(forge.asn1.Class.CONTEXT_SPECIFIC, 0, false, keyId.toString('binary'))])
}

class LocalCertificateAuthority implements CertificateAuthority {
  readonly trustDomain: TrustDomain
  readonly keyType: KeyType
  readonly certificate: X509Certificate
  readonly notAfter: Date
  readonly bundle: TrustBundle
  readonly #key: KeyObject
  readonly #chain: X509Certificate[]
  readonly #subject: forge.asn1.Asn1
  readonly #keyId: Buffer
  readonly #intermediatesPem: string
  readonly #keyPolicy: ResolvedKeyPolicy

  constructor(trustDomain: TrustDomain, key: KeyObject, chain: X509Certificate[], keyPolicy: ResolvedKeyPolicy) {
    this.#keyPolicy = keyPolicy
    this.trustDomain = trustDomain
    this.keyType = keyTypeOf(key)
    this.#key = key
    this.#chain = chain
    this.certificate = chain[0]!
    // No SVID may outlive any certificate above it.
    this.notAfter = new Date(Math.min(...chain.map((c) => parseCertificate(c.raw).notAfter.getTime())))
    const root = chain[chain.length - 1]!
    this.bundle = TrustBundle.create({ trustDomain, x509Authorities: [root] })
    // The subject is field 5 of a v3 TBSCertificate (after version, serial, algorithm, issuer, validity).
    this.#subject = children(children(decode(this.certificate.raw))[0])[5]!
    this.#keyId = parseCertificate(this.certificate.raw).subjectKeyId ?? keyIdentifier(spkiOf(key))
    // Peers hold the root in their bundle; the chain carries the CA and intermediates only.
    this.#intermediatesPem = chain
      .filter((c) => !(c.checkIssued(c) && c.verify(c.publicKey)))
      .map((c) => pemEncode('CERTIFICATE', c.raw))
      .join('')
  }

  async issue(idInput: SpiffeId | string, options: IssueOptions = {}): Promise<X509Svid> {
    throwIfAborted(options.signal, 'issue')
    const id = this.#checkId(idInput)
    const ttl = checkTtl('ttlSeconds', options.ttlSeconds ?? DEFAULT_SVID_TTL_SECONDS)
    const keyType = checkKeyType(options.keyType ?? this.keyType)
    const dnsNames = checkDnsNames(options.dnsNames)
    const { privateKey: key, spki } = await generateKey(keyType)
    throwIfAborted(options.signal, 'issue')
    const signed = this.#sign(id, spki, keyType === 'rsa-2048', ttl, dnsNames)
    return { ...signed, privateKeyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string }
  }

  async signCsr(csrPem: string, options: SignCsrOptions): Promise<SignedCertificate> {
    throwIfAborted(options.signal, 'signCsr')
    const id = this.#checkId(options.id)
    const ttl = checkTtl('ttlSeconds', options.ttlSeconds ?? DEFAULT_SVID_TTL_SECONDS)
    const sans = options.csrSans ?? 'exact'
    if (sans !== 'exact' && sans !== 'ignore') throw invalidArgument('csrSans', sans, '"exact" or "ignore"')
    const csr = parseCsr(csrPem, (key) => checkCsrKey(key, this.#keyPolicy))
    // X509-SVID §2: exactly one URI SAN, and here it must be the ID the caller vouches for.
    if (sans === 'exact' && (csr.uris.length !== 1 || csr.uris[0] !== id.toString())) {
      throw new AmbientError(IdentityErrorCode.CsrRejected, `CSR refused: its URI SANs ${JSON.stringify(csr.uris)} are not exactly the requested ID ${id.toString()}`, {
        details: { requested: id.toString(), uris: csr.uris },
      })
    }
    return this.#sign(id, csr.spki, csr.publicKey.asymmetricKeyType === 'rsa', ttl, [])
  }

  save(): CertificateAuthorityPem {
    return {
      certificateChainPem: this.#chain.map((c) => pemEncode('CERTIFICATE', c.raw)).join(''),
      privateKeyPem: this.#key.export({ type: 'pkcs8', format: 'pem' }) as string,
    }
  }

  #checkId(input: SpiffeId | string): SpiffeId {
    const id = typeof input === 'string' ? SpiffeId.parse(input) : input
    if (!(id instanceof SpiffeId)) throw invalidArgument('id', input, 'a SpiffeId or its text')
    if (!id.memberOf(this.trustDomain)) {
      throw invalidArgument('id', id.toString(), `an ID in the CA's trust domain ${this.trustDomain.name}`)
    }
    // X509-SVID §3.1: a leaf SVID's ID has a non-root path; the bare trust domain ID names signing certificates (§3.2).
    if (id.path === '') throw invalidArgument('id', id.toString(), 'an ID with a path (the trust domain ID is reserved for CAs)')
    return id
  }

  #sign(id: SpiffeId, spki: Buffer, rsa: boolean, ttlSeconds: number, dnsNames: readonly string[]): SignedCertificate {
    const now = Date.now()
    const notBefore = wholeSeconds(now - BACKDATE_SECONDS * 1000)
    // Rounded up so the SVID lives at least ttlSeconds; the CA's own expiry is already whole seconds.
    const notAfter = new Date(Math.min(Math.ceil((now + ttlSeconds * 1000) / 1000) * 1000, this.notAfter.getTime()))
    const usage: number[] = [KeyUsageBit.digitalSignature]
    // X509-SVID §4.3: leaves have digitalSignature; RSA key exchange also needs keyEncipherment.
    if (rsa) usage.push(KeyUsageBit.keyEncipherment)
    const der = buildCertificate({
      serial: serialNumber(),
      issuer: this.#subject,
      // X509-SVID §3.1: the subject may be empty; the SAN then must be critical (RFC 5280 §4.1.2.6).
      subject: seq([]),
      notBefore,
      notAfter,
      subjectPublicKey: spki,
      extensions: [
        // X509-SVID §4.1: leaf basicConstraints cA=false (the DEFAULT, so an empty SEQUENCE in DER).
        extension(OID.basicConstraints, true, seq([])),
        // X509-SVID §4.3: keyUsage critical, digitalSignature, never keyCertSign or cRLSign.
        extension(OID.keyUsage, true, keyUsageValue(usage)),
        // X509-SVID §4.4: extendedKeyUsage serverAuth and clientAuth.
        extension(OID.extKeyUsage, false, seq([oid(OID.serverAuth), oid(OID.clientAuth)])),
        // X509-SVID §2: exactly one URI SAN (other SAN types are allowed).
        extension(OID.subjectAltName, true, subjectAltNameValue(id.toString(), dnsNames)),
        extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spki))),
        extension(OID.authorityKeyIdentifier, false, authorityKeyId(this.#keyId)),
      ],
      signingKey: this.#key,
    })
    return {
      id,
      certificateChainPem: pemEncode('CERTIFICATE', der) + this.#intermediatesPem,
      notBefore,
      notAfter,
    }
  }
}
