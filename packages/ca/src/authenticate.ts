import { createHash, timingSafeEqual } from 'node:crypto'
import { invalidArgument, type AbortOptions } from '@ambientkit/core'
import { SpiffeId } from '@ambientkit/identity'

/** What an authenticator sees of a call. */
export interface CallCredentials {
  /** The first value of a metadata (HTTP/2 header) key, lower case, e.g. `authorization`. */
  header(name: string): string | undefined
  /** The SPIFFE ID of the client's certificate, verified against the CA's bundles; absent without one. */
  readonly peerId: SpiffeId | undefined
  /** Where the call came from, for the audit log. */
  readonly peer: string
}

/** A caller an {@link Authenticator} vouched for. */
export interface AuthenticatedCaller {
  /** The caller's own identity: what it may always obtain. */
  readonly identity: SpiffeId
  /** How it was authenticated, for the audit log (`kubernetes-token`, `svid`, `node-credential`...). */
  readonly method: string
  /**
   * The node the caller runs on, when the authenticator knows it. Only a
   * caller with a node may impersonate, and only identities of pods on it.
   */
  readonly node?: string
  /** More facts for the audit log (the bound pod, the token's subject). */
  readonly details?: Readonly<Record<string, string>>
}

/**
 * One way of authenticating callers of the CA. Returns `undefined` when the
 * call carries no credential of its kind (the next authenticator is tried),
 * and throws when it carries one that is not valid: the message goes to the
 * audit log, never to the caller.
 */
export interface Authenticator {
  readonly name: string
  authenticate(call: CallCredentials, options: AbortOptions): Promise<AuthenticatedCaller | undefined>
}

/** The token of an `authorization: Bearer <token>` header, if the call has one. */
export function bearerToken(call: CallCredentials): string | undefined {
  const header = call.header('authorization')
  if (header === undefined) return undefined
  const match = /^Bearer +(\S+)\s*$/i.exec(header)
  if (match === null) throw new Error('the authorization header is not "Bearer <token>"')
  return match[1]
}

/**
 * Authenticates callers by the X.509-SVID they present over mutual TLS
 * (renewals: a workload holding a valid SVID gets a new one for the same
 * identity). Such a caller has no node, so it never impersonates.
 */
export function createSvidAuthenticator(): Authenticator {
  return {
    name: 'svid',
    async authenticate(call) {
      return call.peerId === undefined ? undefined : { identity: call.peerId, method: 'svid' }
    },
  }
}

/** A node of the local mesh and its credential. */
export interface NodeCredential {
  /** The node's name: what impersonation checks pods against. */
  readonly node: string
  /** The secret the node's agent sends as `authorization: Bearer <credential>`. */
  readonly credential: string
}

/** Options of {@link createNodeCredentialAuthenticator}. */
export interface NodeCredentialAuthenticatorOptions {
  /** The nodes and their credentials; a function is called per request, so credentials can change. */
  readonly nodes: readonly NodeCredential[] | (() => readonly NodeCredential[])
  /** The identity a node agent authenticated this way has (list it in the CA's `trustedNodeAccounts`). */
  readonly identity: SpiffeId | string
}

const digest = (text: string): Buffer => createHash('sha256').update(text).digest()

/**
 * Authenticates node agents by a per-node secret the control plane created
 * (the local mesh: a file readable by root only). The caller gets the node
 * agents' identity and its node, so it may ask for the identities of pods
 * scheduled on that node. Compared in constant time.
 */
export function createNodeCredentialAuthenticator(options: NodeCredentialAuthenticatorOptions): Authenticator {
  const identity = typeof options.identity === 'string' ? SpiffeId.parse(options.identity) : options.identity
  if (!(identity instanceof SpiffeId)) throw invalidArgument('identity', options.identity, 'a SPIFFE ID')
  const list = typeof options.nodes === 'function' ? options.nodes : () => options.nodes as readonly NodeCredential[]
  return {
    name: 'node-credential',
    async authenticate(call) {
      const token = bearerToken(call)
      if (token === undefined) return undefined
      const presented = digest(token)
      // Every entry is compared, whichever matches, so timing says nothing about which.
      let found: NodeCredential | undefined
      for (const entry of list()) if (timingSafeEqual(presented, digest(entry.credential)) && found === undefined) found = entry
      if (found === undefined) return undefined
      return { identity, method: 'node-credential', node: found.node }
    },
  }
}
