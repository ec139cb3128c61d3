import { isIPv4, isIPv6, SocketAddress as NodeSocketAddress } from 'node:net'
import { AmbientError, CoreErrorCode, describeValue } from './errors'

/** An IP family: 4 or 6. */
export type IpFamily = 4 | 6

/** A parsed socket address. `address` is always in canonical form. */
export interface SocketAddress {
  readonly address: string
  readonly port: number
  readonly family: IpFamily
}

const MAPPED_PREFIX = '::ffff:'

/**
 * The canonical text of an IP address, or `undefined` if `text` is not one.
 * IPv4 is dotted decimal without leading zeros; IPv6 is RFC 5952 text
 * (lower case, longest zero run compressed); an IPv4-mapped IPv6 address
 * (`::ffff:10.0.0.1`) becomes its IPv4 address, because a dual-stack socket
 * reports IPv4 peers that way and they are the same host.
 */
export function tryCanonicalIp(text: string): string | undefined {
  if (isIPv4(text)) return text
  // Zone identifiers (fe80::1%eth0) name an interface, not a host: refuse them.
  if (!isIPv6(text) || text.includes('%')) return undefined
  const canonical = new NodeSocketAddress({ address: text, family: 'ipv6' }).address
  if (canonical.startsWith(MAPPED_PREFIX)) {
    const rest = canonical.slice(MAPPED_PREFIX.length)
    if (isIPv4(rest)) return rest
  }
  // Node writes the deprecated IPv4-compatible addresses (::/96) as `::1.2.3.4`;
  // RFC 5952 §5 keeps dotted notation for mapped addresses only, and
  // consumers of canonical text (CIDR arithmetic) expect hex groups.
  if (canonical.startsWith('::') && isIPv4(canonical.slice(2))) {
    const [a, b, c, d] = canonical.slice(2).split('.').map(Number) as [number, number, number, number]
    return `::${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  return canonical
}

/** Like {@link tryCanonicalIp}, but throws `ERR_AMBIENT_INVALID_ADDRESS` naming the input. */
export function canonicalIp(text: string, what = 'address'): string {
  const canonical = typeof text === 'string' ? tryCanonicalIp(text) : undefined
  if (canonical === undefined) {
    throw new AmbientError(
      CoreErrorCode.InvalidAddress,
      `${what}: expected an IPv4 or IPv6 address, got ${describeValue(text)}`,
      { details: { name: what, value: text } },
    )
  }
  return canonical
}

/** 4 or 6 for a canonical address from {@link canonicalIp}. */
export function ipFamily(canonical: string): IpFamily {
  return canonical.includes(':') ? 6 : 4
}

/**
 * Parses `ip:port` or `[ipv6]:port` (the form of an HBONE `:authority`).
 * Strict: no whitespace, no host names, no zone, a decimal port 1–65535
 * without leading zeros, and an IPv6 address only inside brackets.
 */
export function parseSocketAddress(text: string, what = 'socket address'): SocketAddress {
  const fail = (reason: string): never => {
    throw new AmbientError(
      CoreErrorCode.InvalidAddress,
      `${what}: ${reason}, got ${describeValue(text)} (expected "ip:port" or "[ipv6]:port")`,
      { details: { name: what, value: text } },
    )
  }
  if (typeof text !== 'string' || text.length === 0) return fail('empty')
  if (/\s/.test(text)) return fail('contains whitespace')
  let host: string
  let portText: string
  if (text.startsWith('[')) {
    const close = text.indexOf(']')
    if (close < 0) return fail('unclosed "["')
    host = text.slice(1, close)
    if (text[close + 1] !== ':') return fail('missing ":port" after "]"')
    portText = text.slice(close + 2)
    if (!isIPv6(host)) return fail('not an IPv6 address inside brackets')
  } else {
    const colon = text.lastIndexOf(':')
    if (colon < 0) return fail('missing port')
    host = text.slice(0, colon)
    portText = text.slice(colon + 1)
    if (host.includes(':')) return fail('an IPv6 address must be in brackets')
    if (!isIPv4(host)) return fail('not an IPv4 address')
  }
  const address = tryCanonicalIp(host) ?? fail('invalid IP address')
  return { address, port: parsePortText(portText) ?? fail('port must be 1-65535'), family: ipFamily(address) }
}

function parsePortText(text: string): number | undefined {
  if (!/^[1-9][0-9]{0,4}$/.test(text)) return undefined
  const port = Number(text)
  return port <= 65535 ? port : undefined
}

/** True for an integer 1–65535. */
export function isPort(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 65535
}

/** Formats `ip:port`, bracketing IPv6: the inverse of {@link parseSocketAddress}. */
export function formatSocketAddress(address: { address: string; port: number }): string {
  const ip = canonicalIp(address.address)
  if (!isPort(address.port)) {
    throw new AmbientError(CoreErrorCode.InvalidAddress, `port: expected 1-65535, got ${describeValue(address.port)}`, {
      details: { name: 'port', value: address.port },
    })
  }
  return ipFamily(ip) === 6 ? `[${ip}]:${address.port}` : `${ip}:${address.port}`
}
