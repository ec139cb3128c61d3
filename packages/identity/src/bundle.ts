import { X509Certificate, createPublicKey, type JsonWebKeyInput, type webcrypto } from 'node:crypto'
import { AmbientError, createSubscribers, describeValue, type AmbientErrorDetails, type Subscribable } from '@ambientkit/core'
import { pemDecode, pemEncode } from './der'
import { IdentityErrorCode, invalidCertificate } from './errors'
import { TrustDomain } from './spiffe-id'

/** A JWT-SVID signing key of a bundle (JWT-SVID §6.1, SPIFFE Trust Domain and Bundle §4.2). */
export interface JwtAuthority {
  /** The key ID (`kid`), required by the spec. */
  keyId: string
  /** The public key as a JWK (without `use`/`kid`). */
  /** A JWK as WebCrypto defines it (`webcrypto.JsonWebKey`, the name every @types/node line since 22 has). */
  jwk: webcrypto.JsonWebKey
}

/** Fields of a {@link TrustBundle}. */
export interface TrustBundleInit {
  trustDomain: TrustDomain | string
  /** CA certificates that sign X.509-SVIDs of the trust domain (DER, PEM or `X509Certificate`). */
  x509Authorities?: Iterable<X509Certificate | Buffer | string>
  /** Keys that sign JWT-SVIDs of the trust domain. Default none. */
  jwtAuthorities?: Iterable<JwtAuthority>
  /** `spiffe_sequence`: increases with every change of the bundle. Default unset. */
  sequenceNumber?: number
  /** `spiffe_refresh_hint`: seconds after which a consumer should refetch. Default unset. */
  refreshHintSeconds?: number
}

function invalidBundle(message: string, details: AmbientErrorDetails<'ERR_AMBIENT_INVALID_BUNDLE'> = {}): AmbientError {
  return new AmbientError(IdentityErrorCode.InvalidBundle, `invalid SPIFFE bundle: ${message}`, { details })
}

function toX509(value: X509Certificate | Buffer | string): X509Certificate[] {
  try {
    let certs: X509Certificate[]
    if (value instanceof X509Certificate) certs = [value]
    else if (typeof value === 'string') {
      const ders = pemDecode(value, 'CERTIFICATE')
      if (ders.length === 0) throw invalidCertificate('no CERTIFICATE block in PEM text')
      certs = ders.map((der) => new X509Certificate(der))
    } else certs = [new X509Certificate(value)]
    // Node parses the key lazily: an authority whose key OpenSSL cannot decode would fail every verification later.
    for (const cert of certs) void cert.publicKey
    return certs
  } catch (cause) {
    if (cause instanceof AmbientError) throw cause
    throw invalidCertificate('could not read an X.509 authority and its public key (expected DER, PEM or X509Certificate)', cause)
  }
}

// RFC 7518 §6.1 key types Node's crypto reads, plus OKP (RFC 8037).
const KNOWN_KEY_TYPES = new Set(['EC', 'RSA', 'OKP'])

const isNonNegativeInteger = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0

/**
 * The trust bundle of one trust domain (SPIFFE Trust Domain and Bundle §3):
 * its X.509 authorities, JWT authorities, sequence number and refresh hint.
 * Immutable; read and write the SPIFFE bundle format with
 * {@link TrustBundle.parse} and {@link TrustBundle.toJson}.
 */
export class TrustBundle {
  readonly trustDomain: TrustDomain
  readonly x509Authorities: readonly X509Certificate[]
  readonly jwtAuthorities: readonly JwtAuthority[]
  readonly sequenceNumber: number | undefined
  readonly refreshHintSeconds: number | undefined

  private constructor(init: TrustBundleInit) {
    this.trustDomain = typeof init.trustDomain === 'string' ? TrustDomain.parse(init.trustDomain) : init.trustDomain
    this.x509Authorities = Object.freeze([...(init.x509Authorities ?? [])].flatMap(toX509))
    this.jwtAuthorities = Object.freeze([...(init.jwtAuthorities ?? [])].map((a) => ({ keyId: a.keyId, jwk: { ...a.jwk } })))
    if (init.sequenceNumber !== undefined && !isNonNegativeInteger(init.sequenceNumber)) {
      throw invalidBundle(`spiffe_sequence must be a non-negative integer, got ${describeValue(init.sequenceNumber)}`)
    }
    if (init.refreshHintSeconds !== undefined && !isNonNegativeInteger(init.refreshHintSeconds)) {
      throw invalidBundle(`spiffe_refresh_hint must be a non-negative integer of seconds, got ${describeValue(init.refreshHintSeconds)}`)
    }
    this.sequenceNumber = init.sequenceNumber
    this.refreshHintSeconds = init.refreshHintSeconds
  }

  /** A bundle from its fields. */
  static create(init: TrustBundleInit): TrustBundle {
    return new TrustBundle(init)
  }

  /** A bundle holding the X.509 authorities of a PEM text (one or more CERTIFICATE blocks). */
  static fromPem(trustDomain: TrustDomain | string, pem: string): TrustBundle {
    return new TrustBundle({ trustDomain, x509Authorities: [pem] })
  }

  /**
   * Reads the SPIFFE bundle format (SPIFFE Trust Domain and Bundle §4), a
   * JWKS. Keys with an unknown `kty` or `use` are ignored (§4.2.1, §4.2.2);
   * malformed entries, including `x509-svid` keys without exactly one `x5c`
   * certificate (X509-SVID §6.1), are
   * rejected with `ERR_AMBIENT_INVALID_BUNDLE` naming the entry and the rule.
   */
  static parse(trustDomain: TrustDomain | string, json: string | object): TrustBundle {
    let doc: unknown = json
    if (typeof json === 'string') {
      try {
        doc = JSON.parse(json)
      } catch (cause) {
        throw new AmbientError(IdentityErrorCode.InvalidBundle, 'invalid SPIFFE bundle: not JSON', { cause })
      }
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw invalidBundle('expected a JSON object (a JWK Set)')
    const record = doc as Record<string, unknown>
    // §4.1.3: `keys` MUST be present.
    if (!Array.isArray(record.keys)) throw invalidBundle('"keys" must be an array (SPIFFE bundle §4.1.3)')
    const sequence = record.spiffe_sequence
    const refresh = record.spiffe_refresh_hint
    if (sequence !== undefined && !isNonNegativeInteger(sequence)) throw invalidBundle(`"spiffe_sequence" must be a non-negative integer, got ${describeValue(sequence)} (SPIFFE bundle §4.1.1)`)
    if (refresh !== undefined && !isNonNegativeInteger(refresh)) throw invalidBundle(`"spiffe_refresh_hint" must be a non-negative integer, got ${describeValue(refresh)} (SPIFFE bundle §4.1.2)`)
    const x509: X509Certificate[] = []
    const jwt: JwtAuthority[] = []
    record.keys.forEach((entry: unknown, index: number) => {
      const where = `keys[${index}]`
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw invalidBundle(`${where} must be a JSON object`, { index })
      const key = entry as Record<string, unknown>
      // §4.2.1, §4.2.2: `kty` and `use` MUST be set; a key type or use the reader does not know is ignored.
      if (typeof key.kty !== 'string') throw invalidBundle(`${where} has no "kty" (SPIFFE bundle §4.2.1)`, { index })
      if (typeof key.use !== 'string') throw invalidBundle(`${where} has no "use" (SPIFFE bundle §4.2.2)`, { index })
      if (!KNOWN_KEY_TYPES.has(key.kty)) return
      if (key.use === 'x509-svid') x509.push(readX509Key(key, where, index))
      else if (key.use === 'jwt-svid') jwt.push(readJwtKey(key, where, index))
    })
    return new TrustBundle({ trustDomain, x509Authorities: x509, jwtAuthorities: jwt, sequenceNumber: sequence as number | undefined, refreshHintSeconds: refresh as number | undefined })
  }

  /** The SPIFFE bundle document (a JWKS object) of this bundle. */
  toJwks(): Record<string, unknown> {
    const keys: Record<string, unknown>[] = this.x509Authorities.map((cert) => ({
      ...cert.publicKey.export({ format: 'jwk' }),
      use: 'x509-svid',
      x5c: [cert.raw.toString('base64')],
    }))
    for (const a of this.jwtAuthorities) keys.push({ ...a.jwk, use: 'jwt-svid', kid: a.keyId })
    const doc: Record<string, unknown> = { keys }
    if (this.sequenceNumber !== undefined) doc.spiffe_sequence = this.sequenceNumber
    if (this.refreshHintSeconds !== undefined) doc.spiffe_refresh_hint = this.refreshHintSeconds
    return doc
  }

  /** The SPIFFE bundle document as JSON text. */
  toJson(): string {
    return JSON.stringify(this.toJwks())
  }

  /** The X.509 authorities as PEM text (what Node's `tls` `ca` option takes). */
  x509AuthoritiesPem(): string {
    return this.x509Authorities.map((cert) => pemEncode('CERTIFICATE', cert.raw)).join('')
  }
}

function readX509Key(key: Record<string, unknown>, where: string, index: number): X509Certificate {
  // X509-SVID §6.1: an x509-svid key carries its CA certificate as exactly one x5c entry and no kid.
  // §6.2 lets a reader skip such entries; a bundle is a trust root, so a broken one is an error here.
  if (!Array.isArray(key.x5c) || key.x5c.length !== 1 || typeof key.x5c[0] !== 'string') {
    throw invalidBundle(`${where} ("use": "x509-svid") must have "x5c" with exactly one certificate (X509-SVID §6.1)`, { index })
  }
  if (key.kid !== undefined) throw invalidBundle(`${where} ("use": "x509-svid") must not have a "kid" (X509-SVID §6.1)`, { index })
  const notDer = `${where} "x5c" is not a base64 DER certificate`
  // RFC 7517 §4.7: standard base64, not base64url.
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(key.x5c[0])) throw invalidBundle(`${notDer} (not standard base64)`, { index })
  let cert: X509Certificate
  let certJwk: Record<string, unknown>
  try {
    cert = new X509Certificate(Buffer.from(key.x5c[0], 'base64'))
    certJwk = cert.publicKey.export({ format: 'jwk' }) as Record<string, unknown>
  } catch (cause) {
    throw new AmbientError(IdentityErrorCode.InvalidBundle, `invalid SPIFFE bundle: ${notDer} with a readable public key`, { cause, details: { index } })
  }
  // RFC 7517 §4.7: the key parameters must describe the certificate's own key.
  for (const field of ['kty', 'crv', 'x', 'y', 'n', 'e']) {
    if (key[field] !== undefined && key[field] !== certJwk[field]) {
      throw invalidBundle(`${where} "${field}" does not match the public key of its x5c certificate`, { index })
    }
  }
  return cert
}

function readJwtKey(key: Record<string, unknown>, where: string, index: number): JwtAuthority {
  // JWT-SVID §6.1: a jwt-svid key MUST have a key ID.
  if (typeof key.kid !== 'string' || key.kid === '') throw invalidBundle(`${where} ("use": "jwt-svid") must have a non-empty "kid" (JWT-SVID §6)`, { index })
  const jwk = { ...key }
  delete jwk.use
  delete jwk.kid
  try {
    // JsonWebKeyInput's key type differs between @types/node lines; its shape is what the call takes in each.
    createPublicKey({ key: jwk as JsonWebKeyInput['key'], format: 'jwk' })
  } catch (cause) {
    throw new AmbientError(IdentityErrorCode.InvalidBundle, `invalid SPIFFE bundle: ${where} is not a valid public JWK`, { cause, details: { index } })
  }
  return { keyId: key.kid, jwk: jwk as webcrypto.JsonWebKey }
}

/** What a {@link TrustBundleSet}'s subscribers get after every change. */
export type TrustBundleChange =
  | { readonly type: 'bundle-set'; readonly trustDomain: TrustDomain; readonly bundle: TrustBundle }
  | { readonly type: 'bundle-deleted'; readonly trustDomain: TrustDomain }

/**
 * The bundles of every trust domain a workload trusts (its own and
 * federated ones), keyed by trust domain. Verification only ever uses the
 * bundle of the peer's own trust domain.
 */
export interface TrustBundleSet extends Subscribable<TrustBundleChange> {
  /** The bundle of `trustDomain`, if any. */
  get(trustDomain: TrustDomain | string): TrustBundle | undefined
  /** Adds or replaces the bundle of `bundle.trustDomain`. */
  set(bundle: TrustBundle): void
  /** Removes a trust domain's bundle; true when there was one. */
  delete(trustDomain: TrustDomain | string): boolean
  /** Every bundle. */
  all(): TrustBundle[]
  /** Counts the changes so far: what is derived from the bundles (a TLS context) is current while it is unchanged. */
  readonly generation: number
}

const tdName = (td: TrustDomain | string): string => (typeof td === 'string' ? TrustDomain.parse(td).name : td.name)

/** A mutable {@link TrustBundleSet}, optionally seeded with bundles. */
export function createTrustBundleSet(bundles: Iterable<TrustBundle> = []): TrustBundleSet {
  const map = new Map<string, TrustBundle>()
  const subscribers = createSubscribers<TrustBundleChange>({ what: 'trust bundle set' })
  for (const b of bundles) map.set(b.trustDomain.name, b)
  let generation = 0
  const notify = (change: TrustBundleChange): void => {
    generation++
    subscribers.emit(change)
  }
  return {
    get: (td) => map.get(tdName(td)),
    set(bundle) {
      if (!(bundle instanceof TrustBundle)) throw invalidBundle(`expected a TrustBundle, got ${describeValue(bundle)}`)
      map.set(bundle.trustDomain.name, bundle)
      notify({ type: 'bundle-set', trustDomain: bundle.trustDomain, bundle })
    },
    delete(td) {
      const name = tdName(td)
      const had = map.delete(name)
      if (had) notify({ type: 'bundle-deleted', trustDomain: TrustDomain.parse(name) })
      return had
    },
    all: () => [...map.values()],
    subscribe: subscribers.subscribe,
    get generation() {
      return generation
    },
  }
}
