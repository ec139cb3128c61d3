import { createSecureContext, type ConnectionOptions, type PeerCertificate, type SecureContext, type Server, type TLSSocket, type TlsOptions } from 'node:tls'
import { AmbientError, invalidArgument, throwIfAborted, type AbortOptions } from '@ambientkit/core'
import type { X509Svid } from './ca'
import { parseCertificate } from './certificate'
import { IdentityErrorCode, SvidRejectionReason } from './errors'
import type { IdentityManager } from './manager'
import { SpiffeId } from './spiffe-id'
import { leafSpiffeId, verifyX509Svid } from './verify'

/** Which peer IDs are acceptable: a list (any of them) or a predicate. */
export type SpiffeIdMatcher = ReadonlyArray<SpiffeId | string> | ((id: SpiffeId) => boolean)

/** Options shared by {@link tlsServerOptions} and {@link tlsClientOptions}. */
export interface SpiffeTlsOptions extends AbortOptions {
  /** Holds the SVID to present and the trust bundles to verify peers with. */
  manager: IdentityManager
  /** The local identity whose current SVID is presented. */
  id: SpiffeId | string
  /** ALPN protocols offered, in order of preference (HBONE uses `['h2']`). Default none. */
  alpnProtocols?: string[]
}

/** Options of {@link tlsServerOptions}. */
export interface SpiffeTlsServerInit extends SpiffeTlsOptions {
  /** Peers (clients) accepted besides the SVID check. Default: any valid SVID of a trusted domain. */
  acceptPeers?: SpiffeIdMatcher
  /**
   * `'required'` (default): a client without a valid SVID is refused.
   * `'optional'`: a client may present no certificate (it authenticates
   * otherwise, with a token); one that presents a certificate must present a
   * valid, accepted SVID. `peerSpiffeId()` throws for the ones without.
   */
  clientCertificate?: 'required' | 'optional'
}

/** Options of {@link tlsClientOptions}. */
export interface SpiffeTlsClientInit extends SpiffeTlsOptions {
  /** The server IDs the client accepts; any other fails the handshake with `ERR_AMBIENT_UNEXPECTED_PEER`. Required. */
  expectedPeers: SpiffeIdMatcher
}

/** Node `tls.createServer` / `http2.createSecureServer` options produced by {@link tlsServerOptions}. */
export type SpiffeTlsServerOptions = TlsOptions

/** Node `tls.connect` / `http2.connect` options produced by {@link tlsClientOptions}. */
export type SpiffeTlsClientOptions = ConnectionOptions

interface ServerConfig {
  manager: IdentityManager
  id: SpiffeId
  alpnProtocols: string[] | undefined
  accept: ((id: SpiffeId) => boolean) | undefined
  optional: boolean
}

// The peer ID a server verified, stored on the socket itself: http2 hands out a
// Proxy of the socket (session.socket, req.socket), which forwards property reads
// to the real socket but is a different object for a WeakMap.
const kPeerId = Symbol('ambientkit.peerSpiffeId')
// Client-side IDs already read, keyed by the object the caller passed.
const clientPeers = new WeakMap<object, SpiffeId>()
// The configuration behind options objects returned by tlsServerOptions().
const serverConfigs = new WeakMap<object, ServerConfig>()
// One SecureContext per SVID and bundle generation: building one parses keys and certificates.
const contextCache = new WeakMap<X509Svid, { generation: number; context: SecureContext }>()
function toMatcher(name: string, matcher: SpiffeIdMatcher | undefined): ((id: SpiffeId) => boolean) | undefined {
  if (matcher === undefined) return undefined
  if (typeof matcher === 'function') return matcher
  if (!Array.isArray(matcher)) throw invalidArgument(name, matcher, 'an array of SPIFFE IDs or a predicate')
  const ids = new Set(matcher.map((m) => (typeof m === 'string' ? SpiffeId.parse(m) : m).toString()))
  return (id) => ids.has(id.toString())
}

function describeMatcher(matcher: SpiffeIdMatcher): string {
  return typeof matcher === 'function' ? 'the accepted set' : `one of ${matcher.map(String).join(', ')}`
}

/** Every root of every bundle: what OpenSSL may chain to. SPIFFE's per-domain rule is enforced after it. */
function allAuthoritiesPem(manager: IdentityManager): string {
  return manager.bundles.all().map((b) => b.x509AuthoritiesPem()).join('')
}

function contextOptions(manager: IdentityManager, svid: X509Svid, alpnProtocols: string[] | undefined): TlsOptions {
  const options: TlsOptions = {
    key: svid.privateKeyPem,
    cert: svid.certificateChainPem,
    ca: allAuthoritiesPem(manager),
    // TLS 1.3 only: what HBONE and ztunnel speak, and no renegotiation to reason about.
    minVersion: 'TLSv1.3',
  }
  if (alpnProtocols !== undefined) options.ALPNProtocols = alpnProtocols
  return options
}

function secureContextFor(manager: IdentityManager, svid: X509Svid): SecureContext {
  const generation = manager.bundles.generation
  const cached = contextCache.get(svid)
  if (cached !== undefined && cached.generation === generation) return cached.context
  const context = createSecureContext(contextOptions(manager, svid, undefined))
  contextCache.set(svid, { generation, context })
  return context
}

/** The chain Node reports for a peer, leaf first, as DER. */
function peerChain(cert: PeerCertificate): Buffer[] {
  const chain: Buffer[] = []
  let current: PeerCertificate | undefined = cert
  // Bounded: Node links the root to itself, and a chain longer than this is not an SVID chain.
  while (current?.raw !== undefined && chain.length < 16) {
    if (chain.some((der) => der.equals(current!.raw))) break
    chain.push(current.raw)
    current = (current as PeerCertificate & { issuerCertificate?: PeerCertificate }).issuerCertificate
  }
  return chain
}

/**
 * The client's SVID, verified. Node's detailed peer chain costs several times
 * the leaf alone (it looks issuers up in the trust store), so the leaf is tried
 * first: enough when the leaf is signed by a bundle root or was seen before.
 */
function verifyServerPeer(socket: TLSSocket, manager: IdentityManager): SpiffeId {
  const leaf = socket.getPeerCertificate(false)
  if (leaf?.raw !== undefined) {
    try {
      return verifyX509Svid([leaf.raw], manager.bundles)
    } catch (err) {
      if ((err as AmbientError).details?.reason !== SvidRejectionReason.Untrusted) throw err
    }
  }
  return verifyX509Svid(peerChain(socket.getPeerCertificate(true)), manager.bundles)
}

function checkInit(init: SpiffeTlsOptions): SpiffeId {
  if (init === null || typeof init !== 'object' || init.manager === undefined) throw invalidArgument('manager', init?.manager, 'an IdentityManager')
  if (init.alpnProtocols !== undefined && (!Array.isArray(init.alpnProtocols) || init.alpnProtocols.some((p) => typeof p !== 'string' || p === ''))) {
    throw invalidArgument('alpnProtocols', init.alpnProtocols, 'an array of non-empty strings')
  }
  return typeof init.id === 'string' ? SpiffeId.parse(init.id) : init.id
}

/**
 * Options for `tls.createServer` or `http2.createSecureServer` that present
 * the current SVID of `init.id`, require TLS 1.3 and require a client
 * certificate chaining to a trusted root. Pass the server and these options
 * to {@link attachTlsServer}, which enforces the full X509-SVID checks on every
 * connection and swaps in rotated SVIDs.
 */
export async function tlsServerOptions(init: SpiffeTlsServerInit): Promise<SpiffeTlsServerOptions> {
  const id = checkInit(init)
  const accept = toMatcher('acceptPeers', init.acceptPeers)
  const clientCertificate = init.clientCertificate ?? 'required'
  if (clientCertificate !== 'required' && clientCertificate !== 'optional') throw invalidArgument('clientCertificate', clientCertificate, '"required" or "optional"')
  const svid = await init.manager.get(id, { signal: init.signal })
  const optional = clientCertificate === 'optional'
  const options: SpiffeTlsServerOptions = {
    ...contextOptions(init.manager, svid, init.alpnProtocols),
    requestCert: true,
    // Optional: OpenSSL lets a client without a certificate through, and attachTlsServer refuses a bad one.
    rejectUnauthorized: !optional,
  }
  serverConfigs.set(options, { manager: init.manager, id, alpnProtocols: init.alpnProtocols, accept, optional })
  return options
}

/**
 * Returned by {@link attachTlsServer}: a binding, not a resource. Detaching
 * is synchronous, so it is `Disposable` (`using`), where long-lived objects
 * are `AsyncDisposable`.
 */
export interface TlsServerBinding extends Disposable {
  /** Stops following rotations and restores the server's own listeners. Idempotent. */
  close(): void
  /** Calls `close()`. */
  [Symbol.dispose](): void
}

/**
 * Binds a `tls.Server` or `http2` secure server created with
 * {@link tlsServerOptions} to its identity:
 *
 * - every accepted connection's peer chain is verified with
 *   {@link verifyX509Svid} (per-trust-domain roots, SVID shape, expiry)
 *   before the server's own `secureConnection` listeners see it; rejected
 *   sockets are destroyed and reported on the server's `tlsClientError` event;
 * - when the manager rotates the SVID, or the trust bundles change,
 *   `server.setSecureContext()` installs the new certificate for the next
 *   handshakes (with or without SNI); established connections are untouched.
 */
export function attachTlsServer(server: Server, options: SpiffeTlsServerOptions): TlsServerBinding {
  const config = serverConfigs.get(options)
  if (config === undefined) throw invalidArgument('options', options, 'the object returned by tlsServerOptions()')
  const { manager, id } = config
  const release = manager.retain(id)
  const original = server.listeners('secureConnection') as Array<(socket: TLSSocket) => void>
  const guard = (socket: TLSSocket): void => {
    try {
      if (config.optional && socket.getPeerCertificate(false)?.raw === undefined) {
        for (const listener of original) listener.call(server, socket)
        return
      }
      // With an optional certificate OpenSSL did not refuse a chain it could not verify: refused here.
      if (!socket.authorized) throw new AmbientError(IdentityErrorCode.SvidRejected, `client certificate refused: ${String(socket.authorizationError)}`, { details: { reason: SvidRejectionReason.Untrusted } })
      const peer = verifyServerPeer(socket, manager)
      if (config.accept !== undefined && !config.accept(peer)) {
        throw new AmbientError(IdentityErrorCode.UnexpectedPeer, `client ${peer.toString()} is not an accepted peer`, { details: { peer: peer.toString() } })
      }
      Object.defineProperty(socket, kPeerId, { value: peer })
    } catch (err) {
      socket.destroy()
      server.emit('tlsClientError', err, socket)
      return
    }
    for (const listener of original) listener.call(server, socket)
  }
  server.removeAllListeners('secureConnection')
  server.on('secureConnection', guard)
  const refresh = (): void => {
    const svid = manager.current(id)
    if (svid === undefined) return
    // The ALPN list and the client-certificate policy belong to the server, not the context: only key, chain and roots change.
    server.setSecureContext(contextOptions(manager, svid, undefined))
  }
  const offRotated = manager.subscribe((event) => {
    if (event.type === 'rotated' && event.id.equals(id)) refresh()
  })
  const offBundles = manager.bundles.subscribe(refresh)
  let closed = false
  const close = (): void => {
    if (closed) return
    closed = true
    offRotated()
    offBundles()
    release()
    server.removeListener('secureConnection', guard)
    for (const listener of original) server.on('secureConnection', listener)
  }
  return { close, [Symbol.dispose]: close }
}

/**
 * Options for `tls.connect` or `http2.connect` that present the current SVID
 * of `init.id`, require TLS 1.3, verify the server's X.509-SVID against the
 * bundle of its own trust domain and accept only `init.expectedPeers`; any
 * other server fails the connection with `ERR_AMBIENT_SVID_REJECTED` or
 * `ERR_AMBIENT_UNEXPECTED_PEER`. Call again for later connections: each call
 * picks the current (possibly rotated) SVID, and reuses a cached secure context.
 * Servers are reached by IP, so no SNI is sent unless you add `servername`.
 */
export async function tlsClientOptions(init: SpiffeTlsClientInit): Promise<SpiffeTlsClientOptions> {
  const id = checkInit(init)
  const accept = toMatcher('expectedPeers', init.expectedPeers)
  if (accept === undefined) throw invalidArgument('expectedPeers', init.expectedPeers, 'the server IDs to accept')
  throwIfAborted(init.signal, 'tlsClientOptions')
  const manager = init.manager
  const svid = await manager.get(id, { signal: init.signal })
  const options: SpiffeTlsClientOptions = {
    secureContext: secureContextFor(manager, svid),
    minVersion: 'TLSv1.3',
    rejectUnauthorized: true,
    // Node calls this during the handshake, after OpenSSL verified the chain to some trusted root;
    // returning an error fails the connection before any data is exchanged.
    checkServerIdentity: (_host, cert) => {
      try {
        const peer = verifyX509Svid(peerChain(cert), manager.bundles)
        if (!accept(peer)) {
          return new AmbientError(IdentityErrorCode.UnexpectedPeer, `server presented ${peer.toString()}, expected ${describeMatcher(init.expectedPeers)}`, {
            details: { peer: peer.toString() },
          })
        }
        return undefined
      } catch (err) {
        return err as Error
      }
    },
  }
  if (init.alpnProtocols !== undefined) options.ALPNProtocols = init.alpnProtocols
  return options
}

/**
 * The verified SPIFFE ID of a TLS socket's peer. On the server side it is
 * the ID {@link attachTlsServer} verified; on the client side, the server's
 * ID that {@link tlsClientOptions} verified during the handshake. Accepts
 * the proxies http2 hands out (`session.socket`, `req.socket`). Throws
 * `ERR_AMBIENT_PEER_NOT_VERIFIED` for sockets not authorized that way.
 */
export function peerSpiffeId(socket: TLSSocket): SpiffeId {
  const known = (socket as TLSSocket & { [kPeerId]?: SpiffeId })[kPeerId] ?? clientPeers.get(socket)
  if (known !== undefined) return known
  // A client socket is authorized only once OpenSSL verified the chain and our checkServerIdentity accepted it.
  const isServerSide = (socket as TLSSocket & { server?: unknown }).server !== undefined
  // getPeerCertificate, not getPeerX509Certificate: on a Node 20 client the latter
  // removes the leaf from OpenSSL's peer chain, so a second call returns the issuer or nothing.
  const cert = socket.authorized && !isServerSide ? socket.getPeerCertificate() : undefined
  if (cert?.raw === undefined) {
    throw new AmbientError(IdentityErrorCode.PeerNotVerified, 'the socket has no peer verified by @ambientkit/identity (use tlsClientOptions, or tlsServerOptions with attachTlsServer)')
  }
  const id = leafSpiffeId(parseCertificate(cert.raw))
  clientPeers.set(socket, id)
  return id
}
