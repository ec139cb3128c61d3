import type { AmbientErrorCode } from '@ambientkit/core'

/** Error codes of the HBONE layer of `@ambientkit/proxy` (listed in docs/errors.md). */
export const HboneErrorCode = {
  /** The TCP or TLS connection to the HBONE peer could not be established (`cause` has the socket or TLS error). */
  ConnectFailed: 'ERR_AMBIENT_HBONE_CONNECT_FAILED',
  /** The HBONE peer did not negotiate ALPN `h2`. */
  Alpn: 'ERR_AMBIENT_HBONE_ALPN',
  /** The HBONE peer presented a SPIFFE ID that is not one of the expected identities. */
  IdentityMismatch: 'ERR_AMBIENT_HBONE_IDENTITY_MISMATCH',
  /** The HBONE peer answered the `CONNECT` with a status other than 200 (`details.status`). */
  Status: 'ERR_AMBIENT_HBONE_STATUS',
  /** The HTTP/2 session or stream failed before the tunnel was established (`details.rstCode` when reset). */
  Stream: 'ERR_AMBIENT_HBONE_STREAM',
  /** An inbound connection's TLS handshake did not finish within the server's `handshakeTimeout` (reported to `onHandshakeFailure`). */
  HandshakeTimeout: 'ERR_AMBIENT_HBONE_HANDSHAKE_TIMEOUT',
  /** An inbound connection or session was refused by a server limit (pending handshakes, sessions per peer; reported to `onHandshakeFailure`). */
  Shed: 'ERR_AMBIENT_HBONE_SHED',
  /** A tunnel moved no byte for the server's `tunnelIdleTimeout`, or its peer took none for `tunnelStallTimeout`; both sides were reset (the record's `error`). */
  TunnelTimeout: 'ERR_AMBIENT_HBONE_TUNNEL_TIMEOUT',
  /** The native HBONE data path was asked for but its addon is not built (the message says how to build it). */
  NativeUnavailable: 'ERR_AMBIENT_HBONE_NATIVE_UNAVAILABLE',
  /** The native data path could not build a TLS context from an SVID and bundle (the message names the part: certificate chain, private key, roots). */
  TlsContext: 'ERR_AMBIENT_HBONE_TLS_CONTEXT',
  /** Some workloads of a node proxy's `replaceAll` failed to start (`details.failures`: uid and error of each; the others run). */
  WorkloadsFailed: 'ERR_AMBIENT_PROXY_WORKLOADS_FAILED',
  /** Prometheus metrics were asked for but the optional peer dependency `prom-client` is not installed. */
  MetricsUnavailable: 'ERR_AMBIENT_PROXY_METRICS_UNAVAILABLE',
  /** `AMBIENTKIT_HBONE_THREADS` is not a whole number from 1 to 64 (the message quotes it). */
  Threads: 'ERR_AMBIENT_HBONE_THREADS',
} as const satisfies Record<string, AmbientErrorCode>

/** One of {@link HboneErrorCode}'s values. */
export type HboneErrorCodeValue = (typeof HboneErrorCode)[keyof typeof HboneErrorCode]
