/**
 * The `host=` of a `forwarded` header's first element (RFC 7239 §5.3),
 * unquoted; `undefined` when there is none. Read in one pass by the
 * header's grammar: pairs separated by `;`, elements by `,`, a value a token
 * or a quoted-string, so a `host=` inside another pair's quoted value is
 * never taken for one.
 */
export function forwardedHost(header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  let i = 0
  while (i < header.length) {
    const eq = header.indexOf('=', i)
    if (eq < 0) return undefined
    const name = header.slice(i, eq).trim().toLowerCase()
    let value = ''
    i = eq + 1
    while (i < header.length && (header[i] === ' ' || header[i] === '\t')) i++
    if (header[i] === '"') {
      for (i++; i < header.length && header[i] !== '"'; i++) {
        if (header[i] === '\\') i++
        value += header[i] ?? ''
      }
      i++
    } else {
      const start = i
      while (i < header.length && header[i] !== ';' && header[i] !== ',') i++
      value = header.slice(start, i).trim()
    }
    if (name === 'host') return value === '' ? undefined : value
    while (i < header.length && header[i] !== ';' && header[i] !== ',') i++
    if (header[i] !== ';') return undefined
    i++
  }
  return undefined
}
