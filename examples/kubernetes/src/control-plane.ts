/**
 * The control plane of the Kubernetes example: the mesh CA as a service
 * (`@ambientkit/ca`), the only place the CA's key is. Node agents present
 * their projected service-account token (audience `istio-ca`); a TokenReview
 * names their service account and bound pod, and Istio's impersonation rule
 * gives them only the identities of pods scheduled on their node.
 *
 *   node dist/control-plane.js --config /etc/ambientkit/mesh.yaml
 */
import { readFile } from 'node:fs/promises'
import { createJsonLogger } from '@ambientkit/core'
import {
  TrustBundle, createIdentityManager, createJwtSvidIssuer, createLocalCaSource, createTrustBundleSet, loadCertificateAuthority,
} from '@ambientkit/identity'
import {
  auditToJsonLines, createCaServer, createKubernetesPodDirectory, createKubernetesTokenAuthenticator, createSvidAuthenticator, kubernetesApiInCluster,
} from '@ambientkit/ca'
import { parse } from 'yaml'

const log = createJsonLogger({ bindings: { component: 'ambientkit-control-plane' } })
const configPath = process.argv[process.argv.indexOf('--config') + 1] ?? '/etc/ambientkit/mesh.yaml'
const mesh = (parse(await readFile(configPath, 'utf8')) ?? {}) as { trustDomain?: string; svidTtlSeconds?: number }
const trustDomain = mesh.trustDomain ?? 'cluster.local'
const namespace = process.env.POD_NAMESPACE ?? 'ambientkit-system'
const CA_DIR = '/etc/ambientkit/ca'

// The CA's key, mounted from the ambientkit-ca Secret into this Deployment only.
const ca = loadCertificateAuthority({
  certificateChainPem: await readFile(`${CA_DIR}/ca.crt`, 'utf8'),
  privateKeyPem: await readFile(`${CA_DIR}/ca.key`, 'utf8'),
})
// JWT-SVIDs are signed with the Secret's jwt.key when it has one, else with a key made at start (tokens then die with the pod).
const jwtKey = await readFile(`${CA_DIR}/jwt.key`, 'utf8').catch(() => undefined)
const jwt = await createJwtSvidIssuer({ trustDomain, ...(jwtKey ? { privateKey: jwtKey } : {}) })
const bundles = createTrustBundleSet([TrustBundle.create({ trustDomain, x509Authorities: ca.bundle.x509Authorities, jwtAuthorities: [jwt.authority] })])

// Its own TLS certificate: an SVID with the Service's DNS names, checked by node agents as ztunnel checks istiod's.
const service = `ambientkit-control-plane.${namespace}.svc`
const own = createIdentityManager({ source: createLocalCaSource(ca, { dnsNames: () => [service, `${service}.cluster.local`] }), logger: log })
const api = kubernetesApiInCluster()
const server = await createCaServer({
  ca,
  bundles,
  jwtIssuer: jwt,
  authenticators: [createKubernetesTokenAuthenticator({ api, trustDomain, audiences: ['istio-ca'] }), createSvidAuthenticator()],
  trustedNodeAccounts: [`${namespace}/ambientkit-node`],
  pods: createKubernetesPodDirectory({ api }),
  maxTtlSeconds: mesh.svidTtlSeconds ?? 86_400,
  tls: { manager: own, id: `spiffe://${trustDomain}/ns/${namespace}/sa/ambientkit-control-plane` },
  listen: { host: '0.0.0.0', port: 15012 },
  audit: auditToJsonLines((line) => process.stdout.write(line)),
  logger: log,
})
log.info({ address: server.address(), trustDomain }, 'CA service ready')

process.once('SIGTERM', () => {
  void server.close().then(() => own.close()).then(() => process.exit(0))
})
