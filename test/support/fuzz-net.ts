// Generators of network addresses from their grammars (RFC 3986 §3.2.2
// IPv4address and IPv6address, RFC 4632 CIDR), shared by the fuzz suites.
// Each value carries what it denotes, so a parser's answer can be checked
// against the generated number rather than against another parser.
import fc from 'fast-check'

/** An IP address as text, with the number and family it denotes. */
export interface GeneratedIp {
  readonly text: string
  readonly family: 4 | 6
  readonly value: bigint
}

const MAPPED_PREFIX = 0xffffn << 32n

/** RFC 3986 dec-octet: no leading zeros. */
export function ipv4Text(value: bigint): string {
  return [24n, 16n, 8n, 0n].map((shift) => String((value >> shift) & 0xffn)).join('.')
}

/**
 * One RFC 3986 spelling of a 128-bit value: `compressAt`/`compressLength`
 * pick the run of zero groups `::` replaces (none when it does not fit),
 * `ls32AsIpv4` writes the last 32 bits as dotted decimal, `upper` and
 * `pad` pick hex case and leading zeros of each h16.
 */
export function ipv6Text(value: bigint, style: { compressAt: number; compressLength: number; ls32AsIpv4: boolean; upper: boolean; pad: number }): string {
  const groups = Array.from({ length: 8 }, (_, i) => Number((value >> BigInt(112 - 16 * i)) & 0xffffn))
  const h16 = (g: number): string => {
    const hex = g.toString(16).padStart(Math.min(4, Math.max(1, style.pad)), '0')
    return style.upper ? hex.toUpperCase() : hex
  }
  const count = style.ls32AsIpv4 ? 6 : 8
  const tail = style.ls32AsIpv4 ? ipv4Text(value & 0xffffffffn) : undefined
  const h16s = groups.slice(0, count).map(h16)
  // The run of zero groups starting at compressAt, at most compressLength long, that `::` replaces.
  const start = style.compressAt % (count + 1)
  let length = 0
  while (start + length < count && length < style.compressLength && groups[start + length] === 0) length++
  const text = length === 0 ? h16s.join(':') : `${h16s.slice(0, start).join(':')}::${h16s.slice(start + length).join(':')}`
  if (tail === undefined) return text
  return text.endsWith('::') ? text + tail : `${text}:${tail}`
}

const byteValue = fc.bigInt({ min: 0n, max: 0xffn })
/** A value with many zero groups (so `::` has runs to compress) or any value. */
const ipv6Value = fc.oneof(
  fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }),
  fc.array(fc.oneof(fc.constant(0n), fc.bigInt({ min: 0n, max: 0xffffn })), { minLength: 8, maxLength: 8 }).map((g) => g.reduce((a, b) => (a << 16n) | b, 0n)),
  fc.bigInt({ min: 0n, max: 0xffffffffn }).map((v) => MAPPED_PREFIX | v),
  fc.constantFrom(0n, 1n),
)

export const ipv4Arb: fc.Arbitrary<GeneratedIp> = fc
  .tuple(byteValue, byteValue, byteValue, byteValue)
  .map(([a, b, c, d]) => (a << 24n) | (b << 16n) | (c << 8n) | d)
  .map((value) => ({ text: ipv4Text(value), family: 4 as const, value }))

export const ipv6Arb: fc.Arbitrary<GeneratedIp> = fc
  .record({
    value: ipv6Value,
    compressAt: fc.nat({ max: 8 }),
    compressLength: fc.integer({ min: 0, max: 8 }),
    ls32AsIpv4: fc.boolean(),
    upper: fc.boolean(),
    pad: fc.integer({ min: 1, max: 4 }),
  })
  .map(({ value, ...style }) => ({ text: ipv6Text(value, style), family: 6 as const, value }))

export const ipArb: fc.Arbitrary<GeneratedIp> = fc.oneof(ipv4Arb, ipv6Arb)

/** Where an address ends up once canonical: an IPv4-mapped IPv6 address is its IPv4 address. */
export function canonicalFamily(ip: GeneratedIp): { family: 4 | 6; value: bigint } {
  if (ip.family === 6 && ip.value >> 32n === 0xffffn) return { family: 4, value: ip.value & 0xffffffffn }
  return { family: ip.family, value: ip.value }
}

/** The number an IP text denotes, read by this file's own reading of RFC 4291 §2.2 (for checking canonical output). */
export function ipValueOf(text: string): bigint {
  if (!text.includes(':')) return text.split('.').reduce((acc, part) => (acc << 8n) | BigInt(part), 0n)
  let hex = text
  const lastColon = text.lastIndexOf(':')
  if (text.slice(lastColon + 1).includes('.')) {
    const v4 = ipValueOf(text.slice(lastColon + 1))
    hex = `${text.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`
  }
  const [left, right] = hex.split('::') as [string, string | undefined]
  const l = left === '' ? [] : left.split(':')
  const r = right === undefined || right === '' ? [] : right.split(':')
  const groups = right === undefined ? l : [...l, ...Array<string>(8 - l.length - r.length).fill('0'), ...r]
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n)
}

export const portArb = fc.integer({ min: 1, max: 65535 })

/** A CIDR whose host bits are zero, with its network and prefix length. */
export interface GeneratedCidr {
  readonly text: string
  readonly family: 4 | 6
  readonly network: bigint
  readonly prefix: number
}

export const cidrArb: fc.Arbitrary<GeneratedCidr> = fc
  .tuple(ipArb, fc.nat({ max: 128 }))
  .map(([ip, p]) => {
    const bits = ip.family === 4 ? 32 : 128
    const prefix = p % (bits + 1)
    const hostMask = (1n << BigInt(bits - prefix)) - 1n
    const network = ip.value & ~hostMask
    const text = ip.family === 4 ? ipv4Text(network) : ipv6Text(network, { compressAt: 0, compressLength: 8, ls32AsIpv4: false, upper: false, pad: 1 })
    return { text: `${text}/${prefix}`, family: ip.family, network, prefix }
  })

/** True when `ip` (canonical family and value) is inside `cidr`. */
export function cidrContains(cidr: GeneratedCidr, ip: { family: 4 | 6; value: bigint }): boolean {
  // An IPv4-mapped CIDR covers the IPv4 peers it maps, which arrive canonical as IPv4.
  const mapped = cidr.family === 6 && cidr.prefix >= 96 && cidr.network >> 32n === 0xffffn
  const family = mapped ? 4 : cidr.family
  const network = mapped ? cidr.network & 0xffffffffn : cidr.network
  const prefix = mapped ? cidr.prefix - 96 : cidr.prefix
  if (family !== ip.family) return false
  const bits = family === 4 ? 32 : 128
  return ip.value >> BigInt(bits - prefix) === network >> BigInt(bits - prefix)
}
