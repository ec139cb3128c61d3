import { createPrivateKey, createPublicKey, verify, type KeyObject } from 'node:crypto'
import type forge from 'node-forge'
import { AmbientError, isAmbientError } from '@ambientkit/core'
import { Asn1Type, bitString, children, decode, encode, explicit, fromBinary, isContext, isUniversal, oid, oidOf, pemDecode, pemEncode, seq, set, smallInteger } from './der'
import { OID, SIGNATURE_SCHEMES, extension, signDer, signatureAlgorithm, signatureSchemeOf, spkiOf, uriSanValue } from './certificate'
import { IdentityErrorCode } from './errors'
import { SpiffeId } from './spiffe-id'

/** Options for {@link createCsr}. */
export interface CreateCsrOptions {
  /** The SPIFFE ID to request, put in the CSR's URI SAN. */
  id: SpiffeId | string
  /** The workload's private key (a `KeyObject` or PKCS#8/SEC1/PKCS#1 PEM): ECDSA (P-256, P-384, P-521) or RSA. Whether a CA certifies it is the CA's policy. */
  privateKey: KeyObject | string
}

/**
 * A PKCS#10 certificate signing request (RFC 2986) for a SPIFFE ID, signed
 * with the workload's own key: what {@link CertificateAuthority.signCsr}
 * takes from workloads that never hand their key to the CA.
 */
export function createCsr(options: CreateCsrOptions): string {
  const id = typeof options.id === 'string' ? SpiffeId.parse(options.id) : options.id
  const key = typeof options.privateKey === 'string' ? createPrivateKey(options.privateKey) : options.privateKey
  const scheme = signatureSchemeOf(key)
  const info = seq([
    smallInteger(0),
    seq([]),
    decode(spkiOf(key)),
    // RFC 2986 §4.1 attributes, IMPLICIT [0] SET OF Attribute: with one attribute its
    // encoding is that of an explicit [0] around it. PKCS#9 extensionRequest carries the SAN.
    explicit(0, seq([oid(OID.extensionRequest), set([seq([extension(OID.subjectAltName, true, uriSanValue(id.toString()))])])])),
  ])
  const infoDer = encode(info)
  const der = encode(seq([info, signatureAlgorithm(scheme), bitString(signDer(infoDer, key, scheme))]))
  return pemEncode('CERTIFICATE REQUEST', der)
}

export interface ParsedCsr {
  publicKey: KeyObject
  spki: Buffer
  uris: string[]
}

function refused(message: string, cause?: unknown): AmbientError {
  return new AmbientError(IdentityErrorCode.CsrRejected, `CSR refused: ${message}`, { cause })
}

/**
 * Parses a PEM CSR and checks its self-signature (RFC 2986 §3: proof of
 * possession). `checkKey` runs before the signature is verified, so a key
 * the caller refuses costs no verification.
 */
export function parseCsr(pem: string, checkKey?: (key: KeyObject) => void): ParsedCsr {
  let info: forge.asn1.Asn1
  let algorithm: string
  let signature: Buffer
  let infoDer: Buffer
  try {
    const ders = pemDecode(pem, 'CERTIFICATE REQUEST')
    if (ders.length !== 1) throw refused(`expected one CERTIFICATE REQUEST block, found ${ders.length}`)
    const [infoNode, algNode, sigNode] = children(decode(ders[0]!))
    if (infoNode === undefined || algNode === undefined || !isUniversal(sigNode, Asn1Type.BITSTRING)) throw refused('not a PKCS#10 CertificationRequest')
    info = infoNode
    infoDer = encode(info)
    algorithm = oidOf(children(algNode)[0]!)
    signature = fromBinary((sigNode!.value as string).slice(1))
  } catch (cause) {
    throw isAmbientError(cause) ? cause : refused('not a PEM PKCS#10 certificate request', cause)
  }
  const fields = children(info)
  let spki: Buffer
  let publicKey: KeyObject
  try {
    spki = encode(fields[2]!)
    publicKey = createPublicKey({ key: spki, format: 'der', type: 'spki' })
  } catch (cause) {
    throw refused('its public key cannot be read', cause)
  }
  checkKey?.(publicKey)
  const scheme = SIGNATURE_SCHEMES.get(algorithm)
  if (scheme === undefined || scheme.algorithm !== publicKey.asymmetricKeyType) {
    throw refused(`unsupported signature algorithm ${algorithm} for a ${publicKey.asymmetricKeyType ?? 'unknown'} key; expected ECDSA or RSA PKCS#1 v1.5 with SHA-256, SHA-384 or SHA-512`)
  }
  if (!verify(scheme.hash, infoDer, publicKey, signature)) throw refused('its signature does not verify with its own public key')
  const uris: string[] = []
  const attributes = fields.find((node) => isContext(node, 0))
  for (const attribute of children(attributes)) {
    const [type, values] = children(attribute)
    if (type === undefined || oidOf(type) !== OID.extensionRequest) continue
    for (const ext of children(children(values)[0])) {
      const parts = children(ext)
      if (oidOf(parts[0]!) !== OID.subjectAltName) continue
      const san = decode(fromBinary(parts[parts.length - 1]!.value as string))
      for (const general of children(san)) if (isContext(general, 6)) uris.push(general.value as string)
    }
  }
  return { publicKey, spki, uris }
}
