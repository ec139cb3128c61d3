import type { AmbientErrorCode } from '@ambientkit/core'

/** Error codes owned by `@ambientkit/istio` (see docs/errors.md). */
export const IstioErrorCode = {
  /** The xDS stream to istiod ended or could not start; `details.code` is the gRPC status code, `details.phase` `'connect'` or `'stream'`. The client retries with backoff. */
  XdsStream: 'ERR_AMBIENT_ISTIO_XDS_STREAM',
  /** The istiod credentials could not be read: the token file is unreadable or empty, or the root certificate file is unreadable (`details.path`). The client retries with backoff. */
  Credentials: 'ERR_AMBIENT_ISTIO_CREDENTIALS',
  /** istio-cni sent something ZDS does not allow (`details.reason`); the message was refused with an Ack carrying the reason, and the connection is reopened. */
  ZdsProtocol: 'ERR_AMBIENT_ISTIO_ZDS_PROTOCOL',
  /** The ZDS socket could not be opened, read or written (`details.errnoName`); the client reconnects with backoff. */
  ZdsSocket: 'ERR_AMBIENT_ISTIO_ZDS_SOCKET',
} as const satisfies Record<string, AmbientErrorCode>
