import { constants, createHash, createPrivateKey, createPublicKey, generateKeyPair, sign, verify, type JsonWebKeyInput, type KeyObject, type webcrypto } from 'node:crypto'
import { AmbientError, invalidArgument } from '@ambientkit/core'
import { TrustBundle, type JwtAuthority } from './bundle'
import { describeKey } from './certificate'
import { IdentityErrorCode } from './errors'
import { SpiffeId, TrustDomain } from './spiffe-id'
import type { TrustBundleSource } from './verify'

/** A JWT-SVID (SPIFFE JWT-SVID spec): a JWS compact token and what it says. */
export interface JwtSvid {
  /** The SPIFFE ID in `sub`. */
  readonly id: SpiffeId
  /** The token, JWS compact serialization. */
  readonly token: string
  /** The `aud` claim, as a list. */
  readonly audience: readonly string[]
  /** The `exp` claim. */
  readonly expiresAt: Date
  /** The `iat` claim. */
  readonly issuedAt: Date
}

/** Options of {@link JwtSvidIssuer.sign}. */
export interface SignJwtSvidOptions {
  /** The `aud` claim: at least one audience (JWT-SVID §3.2). */
  audience: readonly string[]
  /** Lifetime in seconds. Default 300: JWT-SVIDs are bearer tokens, keep them short (JWT-SVID §7.2). */
  ttlSeconds?: number
}

/** Signs JWT-SVIDs of one trust domain with a key it holds (a control plane's, never a node's). */
export interface JwtSvidIssuer {
  readonly trustDomain: TrustDomain
  /** The `kid` of every token it signs. */
  readonly keyId: string
  /** The public key as a bundle's JWT authority: what verifiers need. */
  readonly authority: JwtAuthority
  /** Signs a JWT-SVID for `id`, which must be of the issuer's trust domain. */
  sign(id: SpiffeId | string, options: SignJwtSvidOptions): JwtSvid
  /** The private key, PKCS#8 PEM, to store and pass back to {@link createJwtSvidIssuer}. */
  privateKeyPem(): string
}

/** Options of {@link createJwtSvidIssuer}. */
export interface CreateJwtSvidIssuerOptions {
  trustDomain: TrustDomain | string
  /** The signing key: ECDSA P-256 (ES256) or RSA ≥ 2048 bits (RS256). Default: a new P-256 key. */
  privateKey?: KeyObject | string
}

/** Options of {@link verifyJwtSvid}. */
export interface VerifyJwtSvidOptions {
  /** The audience of the validating party: `aud` must contain it (JWT-SVID §4.2). */
  audience: string
  /** Default: now. */
  now?: Date
}

/** What {@link verifyJwtSvid} found in a valid token. */
export interface VerifiedJwtSvid {
  readonly id: SpiffeId
  readonly expiresAt: Date
  /** Every claim of the payload. */
  readonly claims: Readonly<Record<string, unknown>>
}

/** Why {@link verifyJwtSvid} rejected a token: `details.reason` of `ERR_AMBIENT_JWT_SVID_REJECTED`. */
export const JwtSvidRejectionReason = {
  /** Not three base64url parts of JSON, or larger than the limit. */
  Malformed: 'malformed',
  /** `alg` is missing, `none`, or not one of the JWT-SVID algorithms. */
  UnsupportedAlgorithm: 'unsupported-algorithm',
  /** `sub` is missing or not a SPIFFE ID with a path. */
  BadSubject: 'bad-subject',
  /** No JWT authority of the subject's trust domain has the token's `kid`. */
  UnknownKey: 'unknown-key',
  /** The signature does not verify. */
  BadSignature: 'bad-signature',
  /** `exp` is missing or in the past. */
  Expired: 'expired',
  /** `aud` is missing or does not contain the validator's audience. */
  WrongAudience: 'wrong-audience',
} as const

/** One of the {@link JwtSvidRejectionReason} values. */
export type JwtSvidRejectionReason = (typeof JwtSvidRejectionReason)[keyof typeof JwtSvidRejectionReason]

// A token is a header; a JWT-SVID far past this is not one, and must not cost parsing.
const MAX_TOKEN_BYTES = 16 * 1024
// JWT-SVID §2.1: the algorithms a JWT-SVID may be signed with.
const ALGORITHMS: Record<string, { hash: string; kty: string; pss?: boolean; curve?: string }> = {
  RS256: { hash: 'sha256', kty: 'RSA' },
  RS384: { hash: 'sha384', kty: 'RSA' },
  RS512: { hash: 'sha512', kty: 'RSA' },
  PS256: { hash: 'sha256', kty: 'RSA', pss: true },
  PS384: { hash: 'sha384', kty: 'RSA', pss: true },
  PS512: { hash: 'sha512', kty: 'RSA', pss: true },
  ES256: { hash: 'sha256', kty: 'EC', curve: 'P-256' },
  ES384: { hash: 'sha384', kty: 'EC', curve: 'P-384' },
  ES512: { hash: 'sha512', kty: 'EC', curve: 'P-521' },
}

function rejected(reason: JwtSvidRejectionReason, message: string): AmbientError {
  return new AmbientError(IdentityErrorCode.JwtSvidRejected, `JWT-SVID rejected (${reason}): ${message}`, { details: { reason } })
}

const b64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url')

function algorithmOf(key: KeyObject): 'ES256' | 'RS256' {
  const description = describeKey(key)
  if (description.curve === 'P-256') return 'ES256'
  if (description.algorithm === 'rsa' && description.bits! >= 2048) return 'RS256'
  throw invalidArgument('privateKey', description.text, 'an ECDSA P-256 key or an RSA key of at least 2048 bits')
}

/** RFC 7638 JWK thumbprint: a `kid` that names the key itself. */
function thumbprint(jwk: webcrypto.JsonWebKey): string {
  const members = jwk.kty === 'EC' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y } : { e: jwk.e, kty: jwk.kty, n: jwk.n }
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url')
}

/**
 * Creates a JWT-SVID issuer for a trust domain. Put its `authority` in the
 * trust domain's bundle so verifiers find the key by `kid`.
 *
 * @example
 * ```ts
 * import { TrustBundle, createJwtSvidIssuer, verifyJwtSvid } from '@ambientkit/identity'
 *
 * const issuer = await createJwtSvidIssuer({ trustDomain: 'cluster.local' })
 * const bundle = TrustBundle.create({ trustDomain: 'cluster.local', jwtAuthorities: [issuer.authority] })
 * const svid = issuer.sign('spiffe://cluster.local/ns/shop/sa/api', { audience: ['payments'] })
 * verifyJwtSvid(svid.token, bundle, { audience: 'payments' }).id // spiffe://cluster.local/ns/shop/sa/api
 * ```
 */
export async function createJwtSvidIssuer(options: CreateJwtSvidIssuerOptions): Promise<JwtSvidIssuer> {
  const trustDomain = typeof options.trustDomain === 'string' ? TrustDomain.parse(options.trustDomain) : options.trustDomain
  const key = options.privateKey === undefined
    ? await new Promise<KeyObject>((resolve, reject) => generateKeyPair('ec', { namedCurve: 'prime256v1' }, (err, _pub, priv) => (err ? reject(err) : resolve(priv))))
    : typeof options.privateKey === 'string' ? createPrivateKey(options.privateKey) : options.privateKey
  const alg = algorithmOf(key)
  const jwk = createPublicKey(key).export({ format: 'jwk' })
  const keyId = thumbprint(jwk)
  const authority: JwtAuthority = { keyId, jwk }
  const header = b64url(JSON.stringify({ alg, kid: keyId, typ: 'JWT' }))
  return {
    trustDomain,
    keyId,
    authority,
    sign(idInput, signOptions) {
      const id = typeof idInput === 'string' ? SpiffeId.parse(idInput) : idInput
      if (!id.memberOf(trustDomain) || id.path === '') throw invalidArgument('id', id.toString(), `a workload ID of trust domain ${trustDomain.name}`)
      const audience = signOptions.audience
      if (!Array.isArray(audience) || audience.length === 0 || audience.some((a) => typeof a !== 'string' || a === '')) {
        throw invalidArgument('audience', audience, 'at least one non-empty audience (JWT-SVID §3.2)')
      }
      const ttl = signOptions.ttlSeconds ?? 300
      if (!Number.isInteger(ttl) || ttl < 1) throw invalidArgument('ttlSeconds', ttl, 'an integer number of seconds >= 1')
      const now = Math.floor(Date.now() / 1000)
      const claims = { sub: id.toString(), aud: audience.length === 1 ? audience[0] : [...audience], exp: now + ttl, iat: now }
      const input = `${header}.${b64url(JSON.stringify(claims))}`
      const signature = sign('sha256', Buffer.from(input), alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key)
      return { id, token: `${input}.${signature.toString('base64url')}`, audience: [...audience], expiresAt: new Date(claims.exp * 1000), issuedAt: new Date(now * 1000) }
    },
    privateKeyPem: () => key.export({ type: 'pkcs8', format: 'pem' }) as string,
  }
}

function parsePart(part: string, what: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'))
  } catch {
    throw rejected(JwtSvidRejectionReason.Malformed, `the ${what} is not base64url JSON`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw rejected(JwtSvidRejectionReason.Malformed, `the ${what} is not a JSON object`)
  return value as Record<string, unknown>
}

function bundleOf(bundles: TrustBundleSource, id: SpiffeId): TrustBundle | undefined {
  if (bundles instanceof TrustBundle) return bundles.trustDomain.equals(id.trustDomain) ? bundles : undefined
  if ('subscribe' in bundles && typeof bundles.get === 'function') return bundles.get(id.trustDomain)
  for (const b of bundles as Iterable<TrustBundle>) if (b.trustDomain.equals(id.trustDomain)) return b
  return undefined
}

const publicKeys = new WeakMap<webcrypto.JsonWebKey, KeyObject>()

/**
 * Validates a JWT-SVID per the JWT-SVID spec (§4): a JWT-SVID algorithm
 * (never `none`), a `sub` that is a workload SPIFFE ID, a signature by a JWT
 * authority of the bundle of that ID's **own** trust domain (found by `kid`,
 * or tried in turn when the token has none), an `exp` in the future and an
 * `aud` containing `options.audience`. Rejections throw
 * `ERR_AMBIENT_JWT_SVID_REJECTED` with `details.reason` one of
 * {@link JwtSvidRejectionReason}.
 */
export function verifyJwtSvid(token: string, bundles: TrustBundleSource, options: VerifyJwtSvidOptions): VerifiedJwtSvid {
  if (typeof options?.audience !== 'string' || options.audience === '') throw invalidArgument('audience', options?.audience, 'the validating party\'s audience')
  if (typeof token !== 'string' || token.length > MAX_TOKEN_BYTES) throw rejected(JwtSvidRejectionReason.Malformed, `expected a JWS compact string of at most ${MAX_TOKEN_BYTES} bytes`)
  const parts = token.split('.')
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p))) throw rejected(JwtSvidRejectionReason.Malformed, 'expected three base64url parts (JWS compact serialization)')
  const header = parsePart(parts[0]!, 'header')
  const claims = parsePart(parts[1]!, 'payload')
  const alg = typeof header.alg === 'string' ? ALGORITHMS[header.alg] : undefined
  if (alg === undefined) throw rejected(JwtSvidRejectionReason.UnsupportedAlgorithm, `alg ${JSON.stringify(header.alg)} is not a JWT-SVID algorithm (JWT-SVID §2.1)`)
  const id = typeof claims.sub === 'string' ? SpiffeId.tryParse(claims.sub) : undefined
  if (id === undefined || id.path === '') throw rejected(JwtSvidRejectionReason.BadSubject, `sub ${JSON.stringify(claims.sub)} is not a workload SPIFFE ID (JWT-SVID §3.1)`)
  const authorities = (bundleOf(bundles, id)?.jwtAuthorities ?? []).filter((a) => header.kid === undefined || a.keyId === header.kid)
  if (authorities.length === 0) throw rejected(JwtSvidRejectionReason.UnknownKey, `no JWT authority of trust domain ${id.trustDomain.name} has kid ${JSON.stringify(header.kid)}`)
  const input = Buffer.from(`${parts[0]}.${parts[1]}`)
  const signature = Buffer.from(parts[2]!, 'base64url')
  const verified = authorities.some((authority) => {
    if (authority.jwk.kty !== alg.kty || (alg.curve !== undefined && authority.jwk.crv !== alg.curve)) return false
    let key = publicKeys.get(authority.jwk)
    if (key === undefined) {
      key = createPublicKey({ key: authority.jwk as JsonWebKeyInput['key'], format: 'jwk' })
      publicKeys.set(authority.jwk, key)
    }
    const params = alg.kty === 'EC' ? { key, dsaEncoding: 'ieee-p1363' as const } : alg.pss ? { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST } : key
    try {
      return verify(alg.hash, input, params, signature)
    } catch {
      return false
    }
  })
  if (!verified) throw rejected(JwtSvidRejectionReason.BadSignature, `the signature does not verify with a JWT authority of ${id.trustDomain.name}`)
  const now = (options.now ?? new Date()).getTime() / 1000
  if (typeof claims.exp !== 'number' || claims.exp <= now) throw rejected(JwtSvidRejectionReason.Expired, `exp ${JSON.stringify(claims.exp)} is not in the future (JWT-SVID §3.3)`)
  const audiences = typeof claims.aud === 'string' ? [claims.aud] : Array.isArray(claims.aud) ? claims.aud : []
  if (!audiences.includes(options.audience)) throw rejected(JwtSvidRejectionReason.WrongAudience, `aud ${JSON.stringify(claims.aud)} does not contain ${JSON.stringify(options.audience)} (JWT-SVID §3.2)`)
  return { id, expiresAt: new Date(claims.exp * 1000), claims }
}
