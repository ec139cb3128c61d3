import { tryCanonicalIp } from '@ambientkit/core'

/**
 * The client IP of the first (closest to the client) element of a
 * `forwarded` header (RFC 7239 §4, §6): `for=192.0.2.60`,
 * `for="[2001:db8::17]:4711"`. `undefined` when absent or not an IP
 * (obfuscated identifiers and `unknown` carry no address).
 *
 * The header is read by its grammar: `forwarded-element` separated by `,`,
 * `forwarded-pair`s by `;`, and a value is a token or a quoted-string (RFC
 * 7230 §3.2.6), so a separator or a `for=` inside another pair's quoted
 * value is never taken for one of the header's own.
 */
export function forwardedFor(header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  for (const [name, value] of firstElementPairs(header)) {
    if (name.toLowerCase() !== 'for') continue
    if (value.startsWith('[')) {
      const close = value.indexOf(']')
      return close < 0 ? undefined : tryCanonicalIp(value.slice(1, close))
    }
    const colon = value.indexOf(':')
    return tryCanonicalIp(colon < 0 ? value : value.slice(0, colon))
  }
  return undefined
}

/** The `name=value` pairs of the header's first element, quoted-strings unquoted; stops at the first `,` outside quotes. */
function firstElementPairs(header: string): Array<[string, string]> {
  const pairs: Array<[string, string]> = []
  let i = 0
  const skipSpace = (): void => {
    while (i < header.length && (header[i] === ' ' || header[i] === '\t')) i++
  }
  while (i < header.length) {
    skipSpace()
    const nameStart = i
    while (i < header.length && !'=;,'.includes(header[i]!)) i++
    const name = header.slice(nameStart, i).trim()
    let value = ''
    if (header[i] === '=') {
      i++
      skipSpace()
      if (header[i] === '"') {
        i++
        while (i < header.length && header[i] !== '"') {
          // quoted-pair: the escaped character stands for itself.
          if (header[i] === '\\' && i + 1 < header.length) i++
          value += header[i]
          i++
        }
        i++ // the closing quote (or past the end of a header that lacks it)
        skipSpace()
        while (i < header.length && header[i] !== ';' && header[i] !== ',') i++
      } else {
        const valueStart = i
        while (i < header.length && header[i] !== ';' && header[i] !== ',') i++
        value = header.slice(valueStart, i).trim()
      }
    }
    if (name !== '') pairs.push([name, value])
    if (header[i] === ',') break
    i++ // past ';'
  }
  return pairs
}
