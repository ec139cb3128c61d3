/**
 * The `host=` of a `forwarded` header's first element (RFC 7239 §5.3),
 * unquoted; `undefined` when there is none.
 */
export function forwardedHost(header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const pair = /\s*([^=;,\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,]*)\s*([;,]|$)/y
  let match: RegExpExecArray | null
  while ((match = pair.exec(header)) !== null) {
    if (match[1]!.toLowerCase() === 'host') {
      const raw = match[2]!.trim()
      const host = raw.startsWith('"') ? raw.slice(1, -1).replace(/\\(.)/g, '$1') : raw
      return host === '' ? undefined : host
    }
    if (match[3] !== ';') return undefined
  }
  return undefined
}
