/**
 * The mesh's CA as a service, and its clients. The server speaks Istio's
 * certificate API (`istio.v1.auth.IstioCertificateService/CreateCertificate`
 * over gRPC and TLS), so ztunnel and our node agents get SVIDs from it as
 * from istiod; it authenticates callers (a Kubernetes projected token checked
 * by TokenReview, a current SVID over mutual TLS, a local node credential),
 * applies Istio's impersonation rule (a node gets identities only for pods
 * scheduled on it) and writes one audit line per issuance and refusal. The
 * client, {@link createIstioCaSource}, is an `IdentitySource` that works
 * against istiod as against this server. A SPIFFE bundle endpoint serves the
 * trust bundle to federated trust domains.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs'
 * import { createIdentityManager } from '@ambientkit/identity'
 * import { createIstioCaSource } from '@ambientkit/ca'
 *
 * // A node agent getting identities for the pods of its node from istiod.
 * const identities = createIdentityManager({
 *   source: createIstioCaSource({
 *     address: 'istiod.istio-system.svc:15012',
 *     trustDomain: 'cluster.local',
 *     rootCertificates: () => readFileSync('/var/run/secrets/istio/root-cert.pem', 'utf8'),
 *     token: () => readFileSync('/var/run/secrets/tokens/istio-token', 'utf8'),
 *   }),
 * })
 * const svid = await identities.get('spiffe://cluster.local/ns/shop/sa/api')
 * ```
 *
 * @packageDocumentation
 */
export { CaErrorCode } from './errors'
export { auditToJsonLines, type AuditEntry } from './audit'
export {
  bearerToken,
  createNodeCredentialAuthenticator,
  createSvidAuthenticator,
  type AuthenticatedCaller,
  type Authenticator,
  type CallCredentials,
  type NodeCredential,
  type NodeCredentialAuthenticatorOptions,
} from './authenticate'
export {
  createKubernetesApi,
  createKubernetesPodDirectory,
  createKubernetesTokenAuthenticator,
  kubernetesApiInCluster,
  type KubernetesApi,
  type KubernetesApiOptions,
  type KubernetesPodDirectoryOptions,
  type KubernetesTokenAuthenticatorOptions,
  type PodDirectory,
} from './kubernetes'
export { createCaServer, type CaServer, type CaServerLimits, type CaServerListen, type CaServerOptions } from './server'
export type { ListenAddress } from './listen'
export { createIstioCaSource, type IstioCaSource, type IstioCaSourceOptions, type Refreshable } from './client'
export {
  createBundleEndpointServer,
  fetchBundleEndpoint,
  type BundleEndpointServer,
  type BundleEndpointServerOptions,
  type FetchBundleEndpointOptions,
} from './bundle-endpoint'
