import { AmbientError } from '@ambientkit/core'
import { IdentityErrorCode, verifyX509Svid, type IdentityManager, type X509Svid } from '@ambientkit/identity'
import type { NativeAddon, NativeTlsContext } from './native'

/**
 * TLS for the native data path. OpenSSL verifies a peer's chain to any root
 * of any trust bundle; SPIFFE's rule (the chain must end at a root of the
 * peer's own trust domain, and be an X.509-SVID) is applied here, in the
 * `Handshake` event, exactly as `@ambientkit/identity`'s TLS options do.
 */

interface CachedContexts {
  readonly generation: number
  client?: NativeTlsContext
  server?: NativeTlsContext
}

// One context per SVID, role and bundle generation, as identity's own secure
// contexts: building one parses the key and every certificate. A rotated SVID
// is a new object, so new sessions get its context; established ones keep theirs.
const contexts = new WeakMap<X509Svid, CachedContexts>()

/** The addon's context presenting `svid` and trusting every bundle's roots. Throws when the addon refuses the key or chain. */
export function nativeTlsContext(addon: NativeAddon, manager: IdentityManager, svid: X509Svid, role: 'client' | 'server'): NativeTlsContext {
  const generation = manager.bundles.generation
  let cached = contexts.get(svid)
  if (cached === undefined || cached.generation !== generation) {
    cached = { generation }
    contexts.set(svid, cached)
  }
  const roots = (): string => manager.bundles.all().map((bundle) => bundle.x509AuthoritiesPem()).join('')
  return (cached[role] ??= addon.createContext(role === 'server', svid.certificateChainPem, svid.privateKeyPem, roots()))
}

/**
 * The SPIFFE ID of a peer from the chain of a `Handshake` event (DER, leaf
 * first), verified against the bundle of its own trust domain, and, when
 * `expected` is given (a client), one of those IDs. Throws
 * `ERR_AMBIENT_SVID_REJECTED` or `ERR_AMBIENT_UNEXPECTED_PEER`; the message
 * is what the session's close reason says.
 */
export function verifiedPeerIdentity(chain: unknown, manager: IdentityManager, expected?: readonly string[]): string {
  const ders = Array.isArray(chain) ? (chain as Buffer[]) : []
  const id = verifyX509Svid(ders, manager.bundles).toString()
  if (expected !== undefined && !expected.includes(id)) {
    throw new AmbientError(IdentityErrorCode.UnexpectedPeer, `server presented ${id}, expected one of ${expected.join(', ')}`, {
      details: { peer: id, expected },
    })
  }
  return id
}
