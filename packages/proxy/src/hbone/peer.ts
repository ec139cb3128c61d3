import type { TLSSocket } from 'node:tls'
import { AmbientError } from '@ambientkit/core'
import { HboneErrorCode } from './errors'

/** Returns the verified SPIFFE ID (`spiffe://...`) of a TLS peer, or throws. */
export type PeerIdentityFn = (socket: TLSSocket) => string

/** The peer's SPIFFE ID from the single URI SAN of its certificate (X.509-SVID §2). */
export const defaultPeerIdentity: PeerIdentityFn = (socket) => {
  const cert = socket.getPeerX509Certificate()
  const uris = (cert?.subjectAltName ?? '')
    .split(', ')
    .filter((entry) => entry.startsWith('URI:'))
    .map((entry) => entry.slice(4))
  if (uris.length !== 1 || !uris[0]!.startsWith('spiffe://')) {
    throw new AmbientError(HboneErrorCode.IdentityMismatch, `peer certificate: expected exactly one spiffe:// URI SAN, got ${uris.length}`, {
      details: { uris },
    })
  }
  return uris[0]!
}
