import { AmbientError, type AmbientErrorDetailsMap, type NoDetails } from '@ambientkit/core'

/** Error codes owned by `@ambientkit/identity` (see docs/errors.md). */
export const IdentityErrorCode = {
  /** A SPIFFE ID or trust domain broke a rule of the SPIFFE-ID spec; the message names the rule. */
  InvalidSpiffeId: 'ERR_AMBIENT_INVALID_SPIFFE_ID',
  /** A certificate, key, CSR or PEM could not be read, or does not fit its role. */
  InvalidCertificate: 'ERR_AMBIENT_INVALID_CERTIFICATE',
  /** A certificate signing request was refused (bad signature, SAN not the requested ID). */
  CsrRejected: 'ERR_AMBIENT_CSR_REJECTED',
  /** An X.509-SVID failed verification; `details.reason` is one of {@link SvidRejectionReason}. */
  SvidRejected: 'ERR_AMBIENT_SVID_REJECTED',
  /** A SPIFFE bundle document (JWKS) is malformed; the message names the entry and the rule. */
  InvalidBundle: 'ERR_AMBIENT_INVALID_BUNDLE',
  /** An identity source could not produce an SVID (the cause is kept). */
  IdentityUnavailable: 'ERR_AMBIENT_IDENTITY_UNAVAILABLE',
  /** A TLS peer presented a valid SVID whose ID is not one the caller expected. */
  UnexpectedPeer: 'ERR_AMBIENT_UNEXPECTED_PEER',
  /** A JWT-SVID failed validation; `details.reason` is one of {@link JwtSvidRejectionReason}. */
  JwtSvidRejected: 'ERR_AMBIENT_JWT_SVID_REJECTED',
  /** A socket's peer was not verified by this package's TLS options, so it has no SPIFFE ID. */
  PeerNotVerified: 'ERR_AMBIENT_PEER_NOT_VERIFIED',
} as const satisfies Record<string, keyof AmbientErrorDetailsMap>

declare module '@ambientkit/core' {
  /** The `details` of `@ambientkit/identity`'s codes. */
  interface AmbientErrorDetailsMap {
    ERR_AMBIENT_INVALID_SPIFFE_ID: {
      /** The text that was refused. */
      readonly input: unknown
      /** The rule of the SPIFFE-ID spec it broke. */
      readonly rule: string
    }
    ERR_AMBIENT_INVALID_CERTIFICATE: NoDetails
    ERR_AMBIENT_CSR_REJECTED: {
      /** The SPIFFE ID asked for, when the CSR's SANs did not match it. */
      readonly requested?: string
      /** The CSR's URI SANs, when they did not match. */
      readonly uris?: readonly string[]
      /** The CSR's key, when it is outside the CA's key policy (`RSA 1024`, `EC secp256k1`...). */
      readonly key?: string
    }
    ERR_AMBIENT_JWT_SVID_REJECTED: {
      /** Why: one of {@link JwtSvidRejectionReason}. */
      readonly reason: string
    }
    ERR_AMBIENT_SVID_REJECTED: SvidRejectedDetails
    ERR_AMBIENT_INVALID_BUNDLE: {
      /** The index in `keys` of the offending entry, when one entry is at fault. */
      readonly index?: number
    }
    ERR_AMBIENT_IDENTITY_UNAVAILABLE: {
      /** The SPIFFE ID that could not be had. */
      readonly id?: string
    }
    ERR_AMBIENT_UNEXPECTED_PEER: {
      /** The SPIFFE ID the peer presented. */
      readonly peer: string
      /** The IDs that would have been accepted, when they are a list. */
      readonly expected?: readonly string[]
    }
    ERR_AMBIENT_PEER_NOT_VERIFIED: NoDetails
  }
}

/** The `details` of an `ERR_AMBIENT_SVID_REJECTED` error. */
export interface SvidRejectedDetails {
  /** Why, one of {@link SvidRejectionReason}. */
  readonly reason: SvidRejectionReason
  /** The leaf's SPIFFE ID, once it could be read. */
  readonly id?: string
  /** The leaf's URI SAN, when it is not a SPIFFE ID. */
  readonly uri?: string
  /** The leaf's URI SANs, when there is more than one. */
  readonly uris?: readonly string[]
  /** Which certificate was out of its validity period: `leaf`, `intermediate` or `authority`. */
  readonly role?: string
}

/**
 * Why {@link verifyX509Svid} rejected a chain: the value of `details.reason`
 * on an `ERR_AMBIENT_SVID_REJECTED` error. Stable, match on them.
 */
export const SvidRejectionReason = {
  /** The chain is empty or a certificate in it cannot be parsed. */
  Malformed: 'malformed',
  /** The leaf has no URI SAN. */
  NoUriSan: 'no-uri-san',
  /** The leaf has more than one URI SAN (counted in the DER extension). */
  MultipleUriSans: 'multiple-uri-sans',
  /** The leaf's URI SAN is not a valid `spiffe://` ID. */
  NotSpiffeUri: 'not-spiffe-uri',
  /** The leaf's SPIFFE ID has no path (it names a trust domain, not a workload). */
  RootPath: 'root-path',
  /** The leaf has cA=true in basicConstraints. */
  LeafIsCa: 'leaf-is-ca',
  /** The leaf's keyUsage has keyCertSign. */
  LeafKeyCertSign: 'leaf-key-cert-sign',
  /** The leaf's keyUsage has cRLSign. */
  LeafCrlSign: 'leaf-crl-sign',
  /** The leaf lacks keyUsage digitalSignature. */
  LeafNoDigitalSignature: 'leaf-no-digital-signature',
  /** A certificate of the chain is expired at `now`. */
  Expired: 'expired',
  /** A certificate of the chain is not yet valid at `now`. */
  NotYetValid: 'not-yet-valid',
  /** No bundle is known for the leaf's trust domain. */
  NoBundle: 'no-bundle',
  /** The chain does not lead to an authority of the bundle of the leaf's own trust domain. */
  Untrusted: 'untrusted',
  /** A signature in the chain does not verify with its issuer's key. */
  BadSignature: 'bad-signature',
  /** An intermediate of the chain is not a CA (cA=false or no keyCertSign). */
  IntermediateNotCa: 'intermediate-not-ca',
} as const

/** One of the {@link SvidRejectionReason} values. */
export type SvidRejectionReason = (typeof SvidRejectionReason)[keyof typeof SvidRejectionReason]

export function svidRejected(reason: SvidRejectionReason, message: string, details: Omit<SvidRejectedDetails, 'reason'> = {}): AmbientError<'ERR_AMBIENT_SVID_REJECTED'> {
  return new AmbientError(IdentityErrorCode.SvidRejected, `X.509-SVID rejected (${reason}): ${message}`, {
    details: { reason, ...details },
  })
}

export function invalidCertificate(message: string, cause?: unknown): AmbientError<'ERR_AMBIENT_INVALID_CERTIFICATE'> {
  return new AmbientError(IdentityErrorCode.InvalidCertificate, message, { cause })
}
