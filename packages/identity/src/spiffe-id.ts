import { AmbientError, describeValue } from '@ambientkit/core'
import { IdentityErrorCode } from './errors'

// SPIFFE-ID spec §2: "spiffe" scheme, lowercase, followed by "//".
const SCHEME = 'spiffe://'
// SPIFFE-ID spec §2.3: a SPIFFE ID is at most 2048 bytes; the trust domain at most 255 bytes.
const MAX_ID_BYTES = 2048
const MAX_TRUST_DOMAIN_BYTES = 255

function invalid(input: unknown, rule: string): AmbientError {
  return new AmbientError(IdentityErrorCode.InvalidSpiffeId, `invalid SPIFFE ID ${describeValue(input)}: ${rule}`, {
    details: { input, rule },
  })
}

function isTrustDomainChar(c: number): boolean {
  // SPIFFE-ID spec §2.1: lowercase letters, digits, dots, dashes and underscores.
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d || c === 0x5f
}

function isPathChar(c: number): boolean {
  // SPIFFE-ID spec §2.2: letters of either case, digits, dots, dashes and underscores.
  return (c >= 0x41 && c <= 0x5a) || isTrustDomainChar(c)
}

/** Names the rule a character breaks, for characters that signal a forbidden URI component. */
function forbiddenCharRule(c: number, where: 'trust domain' | 'path'): string {
  switch (c) {
    case 0x3a:
      if (where === 'trust domain') return 'a port is not allowed in the trust domain (SPIFFE-ID §2.1)'
      break
    case 0x40: return 'userinfo is not allowed (SPIFFE-ID §2.1)'
    case 0x25: return 'percent-encoding is not allowed (SPIFFE-ID §2.1, §2.2)'
    case 0x3f: return 'a query is not allowed (SPIFFE-ID §2.2)'
    case 0x23: return 'a fragment is not allowed (SPIFFE-ID §2.2)'
  }
  if (where === 'trust domain' && c >= 0x41 && c <= 0x5a) return 'the trust domain must be lowercase (SPIFFE-ID §2.1)'
  return where === 'trust domain'
    ? 'trust domain characters are limited to lowercase letters, numbers, dots, dashes and underscores (SPIFFE-ID §2.1)'
    : 'path segment characters are limited to letters, numbers, dots, dashes and underscores (SPIFFE-ID §2.2)'
}

function checkTrustDomainName(input: unknown, name: string): void {
  if (name.length === 0) throw invalid(input, 'the trust domain is missing (SPIFFE-ID §2.1)')
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i)
    if (!isTrustDomainChar(c)) throw invalid(input, forbiddenCharRule(c, 'trust domain'))
  }
  // Only ASCII passed the loop above, so characters are bytes.
  if (name.length > MAX_TRUST_DOMAIN_BYTES) throw invalid(input, `the trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes (SPIFFE-ID §2.3)`)
}

function checkPath(input: unknown, path: string): void {
  if (path.length === 0) return
  if (path.charCodeAt(0) !== 0x2f) throw invalid(input, 'the path must start with "/" (SPIFFE-ID §2.2)')
  let segmentStart = 1
  for (let i = 1; i <= path.length; i++) {
    const c = i < path.length ? path.charCodeAt(i) : 0x2f
    if (c !== 0x2f) {
      if (!isPathChar(c)) throw invalid(input, forbiddenCharRule(c, 'path'))
      continue
    }
    const length = i - segmentStart
    if (length === 0) {
      throw invalid(input, i === path.length ? 'the path cannot have a trailing slash (SPIFFE-ID §2.2)' : 'the path cannot contain empty segments (SPIFFE-ID §2.2)')
    }
    if ((length === 1 && path.charCodeAt(segmentStart) === 0x2e) || (length === 2 && path.startsWith('..', segmentStart))) {
      throw invalid(input, 'the path cannot contain "." or ".." segments (SPIFFE-ID §2.2)')
    }
    segmentStart = i + 1
  }
}

function checkSegment(name: string, value: unknown): string {
  if (typeof value !== 'string') throw invalid(value, `${name} must be a string`)
  checkPath(value, `/${value}`)
  if (value.includes('/')) throw invalid(value, `${name} must be a single path segment`)
  return value
}

/**
 * A SPIFFE trust domain (SPIFFE-ID spec §2.1): the authority part of a
 * SPIFFE ID, e.g. `cluster.local`. Immutable; compare with {@link TrustDomain.equals}.
 */
export class TrustDomain {
  /** The trust domain name, e.g. `cluster.local`. */
  readonly name: string

  private constructor(name: string) {
    this.name = name
  }

  /**
   * Parses a trust domain name (`example.org`) or the SPIFFE ID of a trust
   * domain (`spiffe://example.org`). Throws `ERR_AMBIENT_INVALID_SPIFFE_ID`
   * naming the rule broken.
   */
  static parse(text: string): TrustDomain {
    if (typeof text !== 'string') throw invalid(text, 'a trust domain must be a string')
    if (text.startsWith(SCHEME)) {
      const id = SpiffeId.parse(text)
      if (id.path !== '') throw invalid(text, 'a trust domain ID has no path')
      return id.trustDomain
    }
    if (text.includes('://')) throw invalid(text, 'the scheme must be "spiffe" (SPIFFE-ID §2)')
    checkTrustDomainName(text, text)
    return new TrustDomain(text)
  }

  /** The SPIFFE ID of the trust domain itself, `spiffe://<name>` (no path). */
  id(): SpiffeId {
    return SpiffeId.parse(`${SCHEME}${this.name}`)
  }

  /** True when both name the same trust domain. */
  equals(other: TrustDomain): boolean {
    return other instanceof TrustDomain && other.name === this.name
  }

  /** The trust domain name. */
  toString(): string {
    return this.name
  }

  toJSON(): string {
    return this.name
  }
}

/**
 * A SPIFFE ID (SPIFFE-ID spec §2): `spiffe://<trust domain><path>`.
 * Immutable; compare with {@link SpiffeId.equals} or by `toString()`.
 *
 * @example
 * ```ts
 * import { SpiffeId } from '@ambientkit/identity'
 *
 * const id = SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/api')
 * id.trustDomain.name      // 'cluster.local'
 * id.path                  // '/ns/shop/sa/api'
 * id.toServiceAccount()    // { namespace: 'shop', serviceAccount: 'api' }
 * ```
 */
export class SpiffeId {
  /** The trust domain the ID belongs to. */
  readonly trustDomain: TrustDomain
  /** The path, `''` or starting with `/`, never ending with `/`. */
  readonly path: string
  readonly #text: string

  private constructor(trustDomain: TrustDomain, path: string) {
    this.trustDomain = trustDomain
    this.path = path
    this.#text = `${SCHEME}${trustDomain.name}${path}`
  }

  /**
   * Parses a SPIFFE ID strictly, byte by byte (not with the WHATWG URL
   * parser, which normalises what the spec forbids). Throws
   * `ERR_AMBIENT_INVALID_SPIFFE_ID` with a message naming the rule broken.
   */
  static parse(text: string): SpiffeId {
    if (typeof text !== 'string') throw invalid(text, 'a SPIFFE ID must be a string')
    if (text.length === 0) throw invalid(text, 'the ID is empty')
    if (Buffer.byteLength(text, 'utf8') > MAX_ID_BYTES) throw invalid(text, `the ID is longer than ${MAX_ID_BYTES} bytes (SPIFFE-ID §2.3)`)
    if (!text.startsWith(SCHEME)) throw invalid(text, 'the scheme must be "spiffe" (lowercase) followed by "://" (SPIFFE-ID §2)')
    let end = SCHEME.length
    while (end < text.length && text.charCodeAt(end) !== 0x2f) end++
    const name = text.slice(SCHEME.length, end)
    checkTrustDomainName(text, name)
    const path = text.slice(end)
    checkPath(text, path)
    return new SpiffeId(TrustDomain.parse(name), path)
  }

  /** Like {@link SpiffeId.parse}, but returns `undefined` instead of throwing. */
  static tryParse(text: string): SpiffeId | undefined {
    try {
      return SpiffeId.parse(text)
    } catch {
      return undefined
    }
  }

  /**
   * The Istio-style workload ID `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
   * `trustDomain` may be a {@link TrustDomain} or its name.
   */
  static fromServiceAccount(trustDomain: TrustDomain | string, namespace: string, serviceAccount: string): SpiffeId {
    const td = typeof trustDomain === 'string' ? TrustDomain.parse(trustDomain) : trustDomain
    const ns = checkSegment('namespace', namespace)
    const sa = checkSegment('serviceAccount', serviceAccount)
    return new SpiffeId(td, `/ns/${ns}/sa/${sa}`)
  }

  /** Builds an ID from a trust domain and a path (`''` or `/seg/...`), validating the path. */
  static fromPath(trustDomain: TrustDomain | string, path: string): SpiffeId {
    const td = typeof trustDomain === 'string' ? TrustDomain.parse(trustDomain) : trustDomain
    return SpiffeId.parse(`${SCHEME}${td.name}${path}`)
  }

  /**
   * The namespace and service account of an ID of the form
   * `/ns/<namespace>/sa/<serviceAccount>`, or `undefined` for any other path.
   */
  toServiceAccount(): { namespace: string; serviceAccount: string } | undefined {
    const parts = this.path.split('/')
    if (parts.length !== 5 || parts[1] !== 'ns' || parts[3] !== 'sa') return undefined
    return { namespace: parts[2]!, serviceAccount: parts[4]! }
  }

  /** True when the ID belongs to `trustDomain`. */
  memberOf(trustDomain: TrustDomain): boolean {
    return this.trustDomain.equals(trustDomain)
  }

  /** True when both are the same ID (IDs are compared byte for byte, SPIFFE-ID §2.2). */
  equals(other: SpiffeId): boolean {
    return other instanceof SpiffeId && other.#text === this.#text
  }

  /** The ID as text, `spiffe://<trust domain><path>`. */
  toString(): string {
    return this.#text
  }

  toJSON(): string {
    return this.#text
  }
}
