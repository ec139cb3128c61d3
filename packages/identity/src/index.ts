/**
 * SPIFFE identities for Node.js: strict SPIFFE IDs, a certificate authority
 * issuing X.509-SVIDs (ECDSA P-256 or RSA-2048), X.509-SVID verification
 * against per-trust-domain bundles (SPIFFE JWKS), an identity manager that
 * rotates SVIDs, and Node `tls`/`http2` options for mutual TLS between
 * SPIFFE identities.
 *
 * @example
 * ```ts
 * import http2 from 'node:http2'
 * import {
 *   SpiffeId, createCertificateAuthority, createIdentityManager, createLocalCaSource,
 *   tlsServerOptions, attachTlsServer, tlsClientOptions, peerSpiffeId,
 * } from '@ambientkit/identity'
 *
 * const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
 * const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
 * const api = SpiffeId.fromServiceAccount('cluster.local', 'shop', 'api')
 * const web = SpiffeId.fromServiceAccount('cluster.local', 'shop', 'web')
 *
 * const serverOptions = await tlsServerOptions({ manager, id: api, alpnProtocols: ['h2'] })
 * const server = http2.createSecureServer(serverOptions, (req, res) => {
 *   res.end(`hello ${peerSpiffeId(req.socket as import('node:tls').TLSSocket)}`)
 * })
 * const binding = attachTlsServer(server, serverOptions)
 * server.listen(15008, '127.0.0.1')
 *
 * const session = http2.connect('https://127.0.0.1:15008',
 *   await tlsClientOptions({ manager, id: web, expectedPeers: [api], alpnProtocols: ['h2'] }))
 * ```
 *
 * @packageDocumentation
 */
export { IdentityErrorCode, SvidRejectionReason } from './errors'
export { SpiffeId, TrustDomain } from './spiffe-id'
export { pemCertificates, type KeyType } from './certificate'
export {
  createCertificateAuthority,
  loadCertificateAuthority,
  type CertificateAuthority,
  type CertificateAuthorityPem,
  type CreateCertificateAuthorityOptions,
  type CsrKeyPolicy,
  type EcdsaCurve,
  type IssueOptions,
  type LoadCertificateAuthorityOptions,
  type SignCsrOptions,
  type SignedCertificate,
  type X509Svid,
} from './ca'
export { createCsr, type CreateCsrOptions } from './csr'
export {
  TrustBundle,
  createTrustBundleSet,
  type JwtAuthority,
  type TrustBundleInit,
  type TrustBundleChange,
  type TrustBundleSet,
} from './bundle'
export { verifyX509Svid, type CertificateChainInput, type TrustBundleSource, type VerifyX509SvidOptions } from './verify'
export {
  createIdentityManager,
  createLocalCaSource,
  type IdentityDroppedEvent,
  type IdentityFailureEvent,
  type IdentityFetchOptions,
  type IdentityManager,
  type IdentityManagerEvent,
  type IdentityManagerOptions,
  type IdentitySource,
  type JwtSvidFetchOptions,
  type LocalCaSourceOptions,
  type RotationEvent,
} from './manager'
export {
  JwtSvidRejectionReason,
  createJwtSvidIssuer,
  verifyJwtSvid,
  type CreateJwtSvidIssuerOptions,
  type JwtSvid,
  type JwtSvidIssuer,
  type SignJwtSvidOptions,
  type VerifiedJwtSvid,
  type VerifyJwtSvidOptions,
} from './jwt'
export {
  attachTlsServer,
  peerSpiffeId,
  tlsClientOptions,
  tlsServerOptions,
  type SpiffeIdMatcher,
  type SpiffeTlsClientInit,
  type SpiffeTlsClientOptions,
  type SpiffeTlsOptions,
  type SpiffeTlsServerInit,
  type SpiffeTlsServerOptions,
  type TlsServerBinding,
} from './tls'
