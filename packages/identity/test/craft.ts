// Builds deliberately bad certificates for rejection tests, with the same
// encoder the CA uses, signed by a real CA's key.
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto'
import type { CertificateAuthority } from '@ambientkit/identity'
import {
  KeyUsageBit, OID, buildCertificate, extension, generateKey, keyIdentifier, keyUsageValue, serialNumber, spkiOf, uriSanValue,
} from '../src/certificate'
import { bool, children, decode, oid, pemEncode, seq } from '../src/der'

export interface CraftOptions {
  uris?: string[]
  cA?: boolean
  keyUsage?: number[]
  notBefore?: Date
  notAfter?: Date
  /** Sign with this key/subject instead of the CA's (e.g. a non-CA intermediate). */
  issuer?: { key: KeyObject; certificate: X509Certificate }
  /** Subject of the crafted certificate (default empty). */
  subjectCn?: string
  key?: KeyObject
}

export interface Crafted {
  pem: string
  der: Buffer
  key: KeyObject
  certificate: X509Certificate
}

export async function craft(ca: CertificateAuthority, options: CraftOptions = {}): Promise<Crafted> {
  const issuerKey = options.issuer?.key ?? createPrivateKey(ca.save().privateKeyPem)
  const issuerCert = options.issuer?.certificate ?? ca.certificate
  const issuerTbs = children(children(decode(issuerCert.raw))[0])
  const key = options.key ?? (await generateKey('ecdsa-p256')).privateKey
  const spki = spkiOf(key)
  const now = Date.now()
  const extensions = [
    extension(OID.basicConstraints, true, seq(options.cA === true ? [bool(true)] : [])),
    extension(OID.keyUsage, true, keyUsageValue(options.keyUsage ?? [KeyUsageBit.digitalSignature])),
    extension(OID.extKeyUsage, false, seq([oid(OID.serverAuth), oid(OID.clientAuth)])),
    extension(OID.subjectKeyIdentifier, false, decode(Buffer.concat([Buffer.of(0x04, 20), keyIdentifier(spki)]))),
  ]
  const uris = options.uris ?? ['spiffe://example.org/w']
  if (uris.length > 0) {
    const san = uriSanValue(uris[0]!)
    for (const uri of uris.slice(1)) (san.value as unknown[]).push(...(uriSanValue(uri).value as unknown[]))
    extensions.push(extension(OID.subjectAltName, options.subjectCn === undefined, san))
  }
  const der = buildCertificate({
    serial: serialNumber(),
    issuer: issuerTbs[5]!,
    subject: options.subjectCn === undefined ? seq([]) : decode(subjectName(options.subjectCn)),
    notBefore: options.notBefore ?? new Date(now - 60_000),
    notAfter: options.notAfter ?? new Date(now + 3_600_000),
    subjectPublicKey: spki,
    extensions,
    signingKey: issuerKey,
  })
  return { pem: pemEncode('CERTIFICATE', der), der, key, certificate: new X509Certificate(der) }
}

function subjectName(cn: string): Buffer {
  // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String cn } } }
  const value = Buffer.from(cn, 'utf8')
  const atv = Buffer.concat([Buffer.of(0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, value.length), value])
  const rdn = Buffer.concat([Buffer.of(0x30, atv.length), atv])
  const set = Buffer.concat([Buffer.of(0x31, rdn.length), rdn])
  return Buffer.concat([Buffer.of(0x30, set.length), set])
}

/** Flips one bit of the signature at the end of a DER certificate. */
export function corruptSignature(der: Buffer): Buffer {
  const copy = Buffer.from(der)
  copy[copy.length - 3]! ^= 0x01
  return copy
}
