// A Kubernetes API server that replays recorded objects (TokenReviews by
// token, pods by name and by node), and a CA service wired to it, as the
// control plane of examples/kubernetes runs it.
import { readFileSync } from 'node:fs'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import {
  createCertificateAuthority, createIdentityManager, createJwtSvidIssuer, createTrustBundleSet, TrustBundle, type CertificateAuthority,
  type IdentityManager, type IdentitySource, type JwtSvidIssuer, type TrustBundleSet,
} from '@ambientkit/identity'
import {
  createCaServer, createKubernetesApi, createKubernetesPodDirectory, createKubernetesTokenAuthenticator, createSvidAuthenticator,
  type AuditEntry, type Authenticator, type CaServer, type CaServerOptions,
} from '@ambientkit/ca'

const fixture = (name: string): unknown => JSON.parse(readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8'))

interface PodObject {
  metadata: { name: string; namespace: string }
  spec: { nodeName: string }
}

export interface FakeKubernetes {
  url: string
  /** Requests seen, `METHOD path`. */
  requests: string[]
  close(): Promise<void>
}

/** The API token the control plane presents; anything else is 401. */
export const CONTROL_PLANE_TOKEN = 'control-plane-sa-token'

export async function fakeKubernetes(): Promise<FakeKubernetes> {
  const reviews = fixture('tokenreviews.json') as Record<string, { spec: { token: string } }>
  const pods = fixture('pods.json') as PodObject[]
  const requests: string[] = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      requests.push(`${req.method} ${req.url}`)
      const send = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
      }
      if (req.headers.authorization !== `Bearer ${CONTROL_PLANE_TOKEN}`) return send(401, { kind: 'Status', status: 'Failure', message: 'Unauthorized', code: 401 })
      const url = new URL(req.url ?? '/', 'http://api')
      if (req.method === 'POST' && url.pathname === '/apis/authentication.k8s.io/v1/tokenreviews') {
        const body = JSON.parse(Buffer.concat(chunks).toString()) as { spec: { token: string; audiences: string[] } }
        const recorded = reviews[body.spec.token]
        // An unknown token is what the API says of a forged one.
        const answer = recorded ?? reviews.forged!
        return send(201, { ...answer, spec: body.spec })
      }
      const one = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(url.pathname)
      if (req.method === 'GET' && one !== null) {
        const pod = pods.find((p) => p.metadata.namespace === one[1] && p.metadata.name === one[2])
        return pod ? send(200, pod) : send(404, { kind: 'Status', status: 'Failure', reason: 'NotFound', message: `pods "${one[2]}" not found`, code: 404 })
      }
      const list = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(url.pathname)
      if (req.method === 'GET' && list !== null) {
        const node = /^spec\.nodeName=(.+)$/.exec(url.searchParams.get('fieldSelector') ?? '')?.[1]
        const items = pods.filter((p) => p.metadata.namespace === list[1] && (node === undefined || p.spec.nodeName === node))
        return send(200, { kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: '48300' }, items })
      }
      send(404, { kind: 'Status', status: 'Failure', reason: 'NotFound', code: 404 })
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  }
}

export const TRUST_DOMAIN = 'cluster.local'
export const CONTROL_PLANE_ID = 'spiffe://cluster.local/ns/ambientkit-system/sa/ambientkit-control-plane'
export const CA_HOST = 'ambientkit-control-plane.ambientkit-system.svc'

export interface TestCa {
  ca: CertificateAuthority
  jwt: JwtSvidIssuer
  bundles: TrustBundleSet
  own: IdentityManager
  server: CaServer
  audit: AuditEntry[]
  kubernetes: FakeKubernetes
  /** `host:port` of the service. */
  address: string
  rootsPem: string
  close(): Promise<void>
}

/** The control plane's own identity source: its CA, with the DNS name clients verify. */
export function controlPlaneSource(ca: () => CertificateAuthority, bundles: TrustBundleSet): IdentitySource {
  return { bundles, fetch: (id, o) => ca().issue(id, { ttlSeconds: o.ttlSeconds, dnsNames: [CA_HOST] }) }
}

export async function startTestCa(overrides: Partial<CaServerOptions> & { authenticators?: readonly Authenticator[] } = {}): Promise<TestCa> {
  const kubernetes = await fakeKubernetes()
  const ca = await createCertificateAuthority({ trustDomain: TRUST_DOMAIN })
  const jwt = await createJwtSvidIssuer({ trustDomain: TRUST_DOMAIN })
  const bundles = createTrustBundleSet([TrustBundle.create({ trustDomain: TRUST_DOMAIN, x509Authorities: ca.bundle.x509Authorities, jwtAuthorities: [jwt.authority] })])
  const own = createIdentityManager({ source: controlPlaneSource(() => ca, bundles) })
  const api = createKubernetesApi({ url: kubernetes.url, token: () => CONTROL_PLANE_TOKEN })
  const audit: AuditEntry[] = []
  const server = await createCaServer({
    ca,
    bundles,
    jwtIssuer: jwt,
    authenticators: [createKubernetesTokenAuthenticator({ api, trustDomain: TRUST_DOMAIN }), createSvidAuthenticator()],
    trustedNodeAccounts: ['ambientkit-system/ambientkit-node'],
    pods: createKubernetesPodDirectory({ api }),
    tls: { manager: own, id: CONTROL_PLANE_ID },
    listen: { host: '127.0.0.1', port: 0 },
    maxTtlSeconds: 3600,
    audit: (entry) => audit.push(entry),
    ...overrides,
  })
  const address = server.address() as { host: string; port: number }
  return {
    ca, jwt, bundles, own, server, audit, kubernetes,
    address: `${address.host}:${address.port}`,
    rootsPem: ca.bundle.x509AuthoritiesPem(),
    async close() {
      await server.close()
      await own.close()
      await kubernetes.close()
    },
  }
}
