import { tryCanonicalIp } from '@ambientkit/core'

/**
 * The client IP of the first (closest to the client) element of a
 * `forwarded` header (RFC 7239 §4, §6): `for=192.0.2.60`,
 * `for="[2001:db8::17]:4711"`. `undefined` when absent or not an IP
 * (obfuscated identifiers and `unknown` carry no address).
 */
export function forwardedFor(header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const first = header.split(',', 1)[0]!
  for (const pair of first.split(';')) {
    const eq = pair.indexOf('=')
    if (eq < 0 || pair.slice(0, eq).trim().toLowerCase() !== 'for') continue
    let value = pair.slice(eq + 1).trim()
    if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1)
    if (value.startsWith('[')) {
      const close = value.indexOf(']')
      return close < 0 ? undefined : tryCanonicalIp(value.slice(1, close))
    }
    const colon = value.indexOf(':')
    return tryCanonicalIp(colon < 0 ? value : value.slice(0, colon))
  }
  return undefined
}
