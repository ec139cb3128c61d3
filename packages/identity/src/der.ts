import forge from 'node-forge'

// node-forge's ASN.1 module builds and reads DER; forge works on "binary
// strings" (one char per byte), so these helpers convert at the edges.
const { asn1 } = forge
export type Asn1 = forge.asn1.Asn1
const U = asn1.Class.UNIVERSAL
const T = asn1.Type

export const toBinary = (buf: Uint8Array): string => Buffer.from(buf).toString('binary')
export const fromBinary = (s: string): Buffer => Buffer.from(s, 'binary')

export const seq = (items: Asn1[]): Asn1 => asn1.create(U, T.SEQUENCE, true, items)
export const set = (items: Asn1[]): Asn1 => asn1.create(U, T.SET, true, items)
export const oid = (dotted: string): Asn1 => asn1.create(U, T.OID, false, asn1.oidToDer(dotted).getBytes())
export const bool = (value: boolean): Asn1 => asn1.create(U, T.BOOLEAN, false, value ? '\xff' : '\x00')
export const nul = (): Asn1 => asn1.create(U, T.NULL, false, '')
export const octets = (bytes: Uint8Array): Asn1 => asn1.create(U, T.OCTETSTRING, false, toBinary(bytes))
export const utf8 = (text: string): Asn1 => asn1.create(U, T.UTF8, false, forge.util.encodeUtf8(text))
export const bitString = (bytes: Uint8Array, unusedBits = 0): Asn1 =>
  asn1.create(U, T.BITSTRING, false, String.fromCharCode(unusedBits) + toBinary(bytes))
export const explicit = (tag: number, inner: Asn1): Asn1 => asn1.create(asn1.Class.CONTEXT_SPECIFIC, tag, true, [inner])

/** A positive INTEGER from big-endian bytes (a leading zero keeps it positive, DER minimal). */
export function unsignedInteger(bytes: Uint8Array): Asn1 {
  let i = 0
  while (i < bytes.length - 1 && bytes[i] === 0) i++
  let body = toBinary(bytes.subarray(i))
  if (body.charCodeAt(0) & 0x80) body = '\x00' + body
  return asn1.create(U, T.INTEGER, false, body)
}

export function smallInteger(n: number): Asn1 {
  return asn1.create(U, T.INTEGER, false, asn1.integerToDer(n).getBytes())
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050. */
export function time(date: Date): Asn1 {
  return date.getUTCFullYear() < 2050
    ? asn1.create(U, T.UTCTIME, false, asn1.dateToUtcTime(date))
    : asn1.create(U, T.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(date))
}

export const encode = (node: Asn1): Buffer => fromBinary(asn1.toDer(node).getBytes())

/** Parses DER strictly (all bytes consumed), keeping BIT STRING contents raw. */
export function decode(der: Uint8Array): Asn1 {
  // @types/node-forge only knows the older boolean `strict` argument; forge 1.x takes options.
  const options = { strict: true, parseAllBytes: true, decodeBitStrings: false } as unknown as boolean
  return asn1.fromDer(forge.util.createBuffer(toBinary(der)), options)
}

export const oidOf = (node: Asn1): string => asn1.derToOid(forge.util.createBuffer(node.value as string))

export function children(node: Asn1 | undefined): Asn1[] {
  return node !== undefined && Array.isArray(node.value) ? node.value : []
}

export const isContext = (node: Asn1 | undefined, tag: number): boolean =>
  node !== undefined && node.tagClass === asn1.Class.CONTEXT_SPECIFIC && node.type === tag

export const isUniversal = (node: Asn1 | undefined, type: number): boolean =>
  node !== undefined && node.tagClass === U && node.type === type

export const Asn1Type = T
export const pemEncode = (label: string, der: Uint8Array): string =>
  forge.pem.encode({ type: label, body: toBinary(der) }, { maxline: 64 }).replace(/\r\n/g, '\n')

/** Every PEM block with `label` in `text`, as DER, in order. */
export function pemDecode(text: string, label: string): Buffer[] {
  return forge.pem
    .decode(text)
    .filter((block) => block.type === label)
    .map((block) => fromBinary(block.body))
}
