import { AmbientError, type AmbientErrorCode } from '@ambientkit/core'
import type * as grpc from '@grpc/grpc-js'

/** Error codes owned by `@ambientkit/ca` (see docs/errors.md). */
export const CaErrorCode = {
  /** The CA answered a call with an error status: `details.grpcCode` (number) and `details.grpcStatus` (its name). */
  Refused: 'ERR_AMBIENT_CA_REFUSED',
  /** The CA's answer was not accepted: `details.reason` says why (`san-mismatch`, `no-root`, `untrusted`, `key-mismatch`, `malformed`). */
  BadResponse: 'ERR_AMBIENT_CA_BAD_RESPONSE',
  /** The Kubernetes API answered a TokenReview or a pod read with an error, or could not be reached: `details.status`. */
  KubernetesApi: 'ERR_AMBIENT_KUBERNETES_API',
  /** A SPIFFE bundle endpoint could not be read, or served no valid bundle: `details.url`. */
  BundleEndpoint: 'ERR_AMBIENT_BUNDLE_ENDPOINT',
} as const satisfies Record<string, AmbientErrorCode>

/**
 * A caller refused, with the gRPC status it gets and the reason that goes to
 * the audit log only: the status message is Istio's fixed text, so a caller
 * learns nothing about other pods or the CA's policy.
 */
export class Refusal extends Error {
  constructor(
    readonly status: grpc.status,
    readonly publicMessage: string,
    readonly reason: string,
    /** The identity the caller asked for, once known. */
    readonly requested?: string,
  ) {
    super(reason)
  }
}

export function badResponse(reason: string, message: string, cause?: unknown): AmbientError {
  return new AmbientError(CaErrorCode.BadResponse, `the CA's answer was refused (${reason}): ${message}`, { cause, details: { reason } })
}
