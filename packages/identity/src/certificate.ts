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
  sha256WithRsa: '1.2.840.113549.1.1.11',
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

export function keyTypeOf(key: KeyObject): KeyType {
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ecdsa-p256'
  if (key.asymmetricKeyType === 'rsa') return 'rsa-2048'
  throw invalidCertificate(`unsupported key: ${key.asymmetricKeyType ?? 'unknown'} ${key.asymmetricKeyDetails?.namedCurve ?? ''}; expected an ECDSA P-256 or RSA key`)
}

/** The signature AlgorithmIdentifier a key of this type signs with (RFC 5758 §3.2, RFC 4055 §5). */
export function signatureAlgorithm(keyType: KeyType): Asn1 {
  return keyType === 'rsa-2048' ? seq([oid(OID.sha256WithRsa), nul()]) : seq([oid(OID.ecdsaWithSha256)])
}

/** Signs DER bytes the way X.509 and PKCS#10 want: SHA-256, DER ECDSA signature or PKCS#1 v1.5. */
export function signDer(data: Uint8Array, key: KeyObject): Buffer {
  return sign('sha256', data, key)
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
  return seq([forge.asn1.create(forge.asn1.Class.CONTEXT_SPECIFIC, 6, false, uri)])
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
  const algorithm = signatureAlgorithm(keyTypeOf(t.signingKey))
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
  return encode(seq([tbs, algorithm, bitString(signDer(encode(tbs), t.signingKey))]))
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
