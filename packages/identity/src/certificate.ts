import { createHash, createPublicKey, generateKeyPair, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto'
import forge from 'node-forge'
import {
  Asn1Type, bitString, bool, children, decode, encode, explicit, fromBinary, isContext, isUniversal, nul, octets, oid, oidOf,
  seq, set, smallInteger, time, unsignedInteger, utf8, type Asn1,
} from './der'
import { invalidCertificate } from './errors'

/** Key algorithms a CA and its SVIDs can use. */
export type KeyType = 'ecdsa-p256' | 'rsa-2048'

export const OID = {
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  ecdsaWithSha512: '1.2.840.10045.4.3.4',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  sha384WithRsa: '1.2.840.113549.1.1.12',
  sha512WithRsa: '1.2.840.113549.1.1.13',
  organization: '2.5.4.10',
  commonName: '2.5.4.3',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  extensionRequest: '1.2.840.113549.1.9.14',
} as const

/** RFC 5280 §4.2.1.3 keyUsage bits, numbered from the most significant bit of the first byte. */
export const KeyUsageBit = { digitalSignature: 0, keyEncipherment: 2, keyCertSign: 5, cRLSign: 6 } as const

export interface KeyPair {
  privateKey: KeyObject
  /** SubjectPublicKeyInfo DER, taken from the generated public key: deriving it from the private key costs more than generating the pair. */
  spki: Buffer
}

export async function generateKey(keyType: KeyType): Promise<KeyPair> {
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, pub: KeyObject, priv: KeyObject): void =>
      err ? reject(err) : resolve({ privateKey: priv, spki: pub.export({ type: 'spki', format: 'der' }) })
    if (keyType === 'rsa-2048') generateKeyPair('rsa', { modulusLength: 2048 }, done)
    else generateKeyPair('ec', { namedCurve: 'prime256v1' }, done)
  })
}

/** A public or private key as a key policy sees it. */
export interface KeyDescription {
  /** `'rsa'`, `'ec'`, or Node's name of another algorithm (`'ed25519'`, `'rsa-pss'`...). */
  readonly algorithm: string
  /** RSA modulus length in bits. */
  readonly bits?: number
  /** ECDSA curve, by its NIST name (`'P-256'`), or OpenSSL's for a curve NIST does not name. */
  readonly curve?: string
  /** For messages: `RSA-2048`, `ECDSA P-256`, `ed25519`. */
  readonly text: string
}

// OpenSSL's curve names → the NIST names JOSE and policies use.
const CURVE_NAMES: Record<string, string> = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' }

export function describeKey(key: KeyObject): KeyDescription {
  const algorithm = key.asymmetricKeyType ?? 'unknown'
  if (algorithm === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0
    return { algorithm, bits, text: `RSA-${bits}` }
  }
  if (algorithm === 'ec') {
    const named = key.asymmetricKeyDetails?.namedCurve ?? 'unknown'
    const curve = CURVE_NAMES[named] ?? named
    return { algorithm, curve, text: `ECDSA ${curve}` }
  }
  return { algorithm, text: algorithm }
}

/** The smallest RSA modulus this package signs with or certifies (NIST SP 800-131A: 112-bit security). */
export const MIN_RSA_BITS = 2048

/** The key type of a CA's own key: ECDSA P-256, or RSA of at least {@link MIN_RSA_BITS} bits. */
export function keyTypeOf(key: KeyObject): KeyType {
  const description = describeKey(key)
  if (description.curve === 'P-256') return 'ecdsa-p256'
  if (description.algorithm === 'rsa' && description.bits! >= MIN_RSA_BITS) return 'rsa-2048'
  throw invalidCertificate(`unsupported key: ${description.text}; expected an ECDSA P-256 key or an RSA key of at least ${MIN_RSA_BITS} bits`)
}

/** How a key signs X.509 and PKCS#10 structures: the AlgorithmIdentifier's OID and the hash. */
export interface SignatureScheme {
  readonly oid: string
  readonly hash: 'sha256' | 'sha384' | 'sha512'
}

/**
 * The signature scheme of a key: SHA-256 for RSA (PKCS#1 v1.5, RFC 4055 §5)
 * and P-256, the curve's own hash size for P-384 and P-521 (RFC 5758 §3.2).
 */
export function signatureSchemeOf(key: KeyObject): SignatureScheme {
  const description = describeKey(key)
  if (description.algorithm === 'rsa') return { oid: OID.sha256WithRsa, hash: 'sha256' }
  switch (description.curve) {
    case 'P-256': return { oid: OID.ecdsaWithSha256, hash: 'sha256' }
    case 'P-384': return { oid: OID.ecdsaWithSha384, hash: 'sha384' }
    case 'P-521': return { oid: OID.ecdsaWithSha512, hash: 'sha512' }
  }
  throw invalidCertificate(`unsupported key: ${description.text}; expected an ECDSA or RSA key`)
}

/** The AlgorithmIdentifier of a scheme: RSA's carries NULL parameters, ECDSA's none (RFC 4055 §5, RFC 5758 §3.2). */
export function signatureAlgorithm(scheme: SignatureScheme): Asn1 {
  return scheme.oid.startsWith('1.2.840.113549.') ? seq([oid(scheme.oid), nul()]) : seq([oid(scheme.oid)])
}

/** Signature schemes a CSR may use, by OID. */
export const SIGNATURE_SCHEMES: ReadonlyMap<string, { algorithm: 'rsa' | 'ec'; hash: SignatureScheme['hash'] }> = new Map([
  [OID.sha256WithRsa, { algorithm: 'rsa', hash: 'sha256' }],
  [OID.sha384WithRsa, { algorithm: 'rsa', hash: 'sha384' }],
  [OID.sha512WithRsa, { algorithm: 'rsa', hash: 'sha512' }],
  [OID.ecdsaWithSha256, { algorithm: 'ec', hash: 'sha256' }],
  [OID.ecdsaWithSha384, { algorithm: 'ec', hash: 'sha384' }],
  [OID.ecdsaWithSha512, { algorithm: 'ec', hash: 'sha512' }],
])

/** Signs DER bytes the way X.509 and PKCS#10 want: a DER ECDSA signature or PKCS#1 v1.5. */
export function signDer(data: Uint8Array, key: KeyObject, scheme: SignatureScheme = signatureSchemeOf(key)): Buffer {
  return sign(scheme.hash, data, key)
}

/** RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING value. */
export function keyIdentifier(spkiDer: Uint8Array): Buffer {
  const spki = decode(spkiDer)
  const bits = children(spki)[1]
  if (!isUniversal(bits, Asn1Type.BITSTRING)) throw invalidCertificate('malformed SubjectPublicKeyInfo')
  return createHash('sha1').update(fromBinary((bits!.value as string).slice(1))).digest()
}

/** The SubjectPublicKeyInfo DER of a key (a private key's public half). */
export function spkiOf(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key
  return pub.export({ type: 'spki', format: 'der' })
}

export interface NameAttribute { oid: string; value: string }

export function name(attributes: NameAttribute[]): Asn1 {
  return seq(attributes.map((a) => set([seq([oid(a.oid), utf8(a.value)])])))
}

export function extension(extnId: string, critical: boolean, value: Asn1): Asn1 {
  const items = [oid(extnId)]
  if (critical) items.push(bool(true))
  items.push(octets(encode(value)))
  return seq(items)
}

/** A keyUsage BIT STRING with the given bits set, trailing zero bits dropped as DER requires. */
export function keyUsageValue(bits: number[]): Asn1 {
  let value = 0
  for (const bit of bits) value |= 0x80 >> bit
  let unused = 0
  while (unused < 7 && (value & (1 << unused)) === 0) unused++
  return bitString(Uint8Array.of(value), unused)
}

/** GeneralNames with one uniformResourceIdentifier [6] IA5String (RFC 5280 §4.2.1.6). */
export function uriSanValue(uri: string): Asn1 {
  return subjectAltNameValue(uri, [])
}

/** GeneralNames with one uniformResourceIdentifier [6] and dNSName [2] entries, all IA5String (RFC 5280 §4.2.1.6). */
export function subjectAltNameValue(uri: string, dnsNames: readonly string[]): Asn1 {
  const general = (tag: number, value: string): Asn1 => forge.asn1.create(forge.asn1.Class.CONTEXT_SPECIFIC, tag, false, value)
  return seq([general(6, uri), ...dnsNames.map((n) => general(2, n))])
}

export function serialNumber(): Buffer {
  // RFC 5280 §4.1.2.2: positive, at most 20 octets; 128 random bits make collisions negligible.
  const serial = randomBytes(16)
  serial[0] = serial[0]! & 0x7f
  return serial
}

export interface CertificateTemplate {
  serial: Uint8Array
  issuer: Asn1
  subject: Asn1
  notBefore: Date
  notAfter: Date
  subjectPublicKey: Buffer
  extensions: Asn1[]
  /** The signer's key; its type picks the signature algorithm. */
  signingKey: KeyObject
}

/**
 * One code path for both key types: node-forge's ASN.1 module encodes the
 * TBSCertificate, Node's crypto signs it (RFC 5280 §4.1).
 */
export function buildCertificate(t: CertificateTemplate): Buffer {
  keyTypeOf(t.signingKey)
  const scheme = signatureSchemeOf(t.signingKey)
  const algorithm = signatureAlgorithm(scheme)
  const tbs = seq([
    explicit(0, smallInteger(2)),
    unsignedInteger(t.serial),
    algorithm,
    t.issuer,
    seq([time(t.notBefore), time(t.notAfter)]),
    t.subject,
    decode(t.subjectPublicKey),
    explicit(3, seq(t.extensions)),
  ])
  return encode(seq([tbs, algorithm, bitString(signDer(encode(tbs), t.signingKey, scheme))]))
}

/** What verification needs from a certificate beyond Node's `X509Certificate`. */
export interface ParsedCertificate {
  x509: X509Certificate
  der: Buffer
  subjectEmpty: boolean
  notBefore: Date
  notAfter: Date
  /** Every uniformResourceIdentifier in the SAN extension, counted from the DER. */
  uris: string[]
  sanCritical: boolean
  /** `undefined` when there is no basicConstraints extension. */
  cA: boolean | undefined
  /** `undefined` when there is no keyUsage extension. */
  keyUsage: Set<number> | undefined
  subjectKeyId: Buffer | undefined
  authorityKeyId: Buffer | undefined
}

function readTime(node: Asn1 | undefined): Date {
  if (isUniversal(node, Asn1Type.UTCTIME)) return forge.asn1.utcTimeToDate(node!.value as string)
  if (isUniversal(node, Asn1Type.GENERALIZEDTIME)) return forge.asn1.generalizedTimeToDate(node!.value as string)
  throw invalidCertificate('malformed validity time')
}

function readBitString(node: Asn1): Set<number> {
  const raw = node.value as string
  const bits = new Set<number>()
  for (let i = 1; i < raw.length; i++) {
    const byte = raw.charCodeAt(i)
    for (let b = 0; b < 8; b++) if (byte & (0x80 >> b)) bits.add((i - 1) * 8 + b)
  }
  return bits
}

/** Reads the fields SPIFFE verification needs from a DER certificate. */
export function parseCertificate(der: Buffer): ParsedCertificate {
  let x509: X509Certificate
  let root: Asn1
  try {
    x509 = new X509Certificate(der)
    root = decode(der)
  } catch (cause) {
    throw invalidCertificate('not a DER X.509 certificate', cause)
  }
  const tbs = children(children(root)[0])
  // With the explicit [0] version field present, fields shift by one.
  const offset = isContext(tbs[0], 0) ? 1 : 0
  const validity = children(tbs[3 + offset])
  const subject = tbs[4 + offset]
  const parsed: ParsedCertificate = {
    x509,
    der,
    subjectEmpty: children(subject).length === 0,
    notBefore: readTime(validity[0]),
    notAfter: readTime(validity[1]),
    uris: [],
    sanCritical: false,
    cA: undefined,
    keyUsage: undefined,
    subjectKeyId: undefined,
    authorityKeyId: undefined,
  }
  const extensions = tbs.find((node) => isContext(node, 3))
  for (const ext of children(children(extensions)[0])) {
    const parts = children(ext)
    const id = oidOf(parts[0]!)
    const critical = parts.length === 3 && parts[1]!.value === '\xff'
    const value = decode(fromBinary(parts[parts.length - 1]!.value as string))
    switch (id) {
      case OID.subjectAltName:
        parsed.sanCritical = critical
        for (const general of children(value)) if (isContext(general, 6)) parsed.uris.push(general.value as string)
        break
      case OID.basicConstraints: {
        const first = children(value)[0]
        parsed.cA = isUniversal(first, Asn1Type.BOOLEAN) && first!.value !== '\x00'
        break
      }
      case OID.keyUsage:
        parsed.keyUsage = readBitString(value)
        break
      case OID.subjectKeyIdentifier:
        parsed.subjectKeyId = fromBinary(value.value as string)
        break
      case OID.authorityKeyIdentifier: {
        const keyId = children(value).find((node) => isContext(node, 0))
        if (keyId !== undefined) parsed.authorityKeyId = fromBinary(keyId.value as string)
        break
      }
    }
  }
  return parsed
}

const PEM_BEGIN = '-----BEGIN CERTIFICATE-----'
const PEM_END = '-----END CERTIFICATE-----'

/**
 * The PEM certificate blocks of `text`, in order, each from its BEGIN line
 * to its END line (anything between blocks is left out). A linear scan, so
 * a peer's long or malformed text costs no backtracking.
 */
export function pemCertificates(text: string): string[] {
  const blocks: string[] = []
  let from = 0
  for (;;) {
    const begin = text.indexOf(PEM_BEGIN, from)
    if (begin < 0) return blocks
    const end = text.indexOf(PEM_END, begin + PEM_BEGIN.length)
    if (end < 0) return blocks
    from = end + PEM_END.length
    blocks.push(text.slice(begin, from))
  }
}
