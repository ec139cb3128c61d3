import { randomBytes } from 'node:crypto'
import { appendFile, chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { join } from 'node:path'
import {
  createPolicyStore,
  createWorkloadRegistry,
  isAmbientError,
  silentLogger,
  type AuthorizationPolicy,
  type Closable,
  type Logger,
  type Service,
  type Workload,
} from '@ambientkit/core'
import {
  TrustBundle, createCertificateAuthority, createIdentityManager, createJwtSvidIssuer, createTrustBundleSet,
  loadCertificateAuthority, type CertificateAuthority, type JwtSvidIssuer,
} from '@ambientkit/identity'
import { createCaServer, createNodeCredentialAuthenticator, createSvidAuthenticator, type AuditEntry, type NodeCredential } from '@ambientkit/ca'
import { podUid, podWorkload, serviceEntry, validatePod, validatePolicies, type MeshConfig, type PodConfig } from './config'
import { controlPlaneId, netnsName, netnsPath, nodeAgentId, state } from './paths'

/**
 * What `GET /v1/snapshot` returns and every line of `GET /v1/watch` carries:
 * the whole desired state. Small meshes make level-triggered updates the
 * simple and robust choice: a watcher that missed lines loses nothing.
 */
export interface MeshState {
  /** Increases by one on every change. */
  readonly revision: number
  readonly trustDomain: string
  /** Lifetime of the SVIDs the CA signs, seconds: what node agents ask for. */
  readonly svidTtlSeconds: number
  readonly workloads: readonly Workload[]
  readonly services: readonly Service[]
  readonly policies: readonly AuthorizationPolicy[]
  /** Where each pod's network namespace is (mesh and non-mesh pods). */
  readonly pods: ReadonlyArray<{ readonly uid: string; readonly netnsPath: string }>
  readonly proxy: MeshConfig['proxy']
  readonly capture: MeshConfig['capture']
}

/** Options of {@link createControlPlane}. */
export interface ControlPlaneOptions {
  readonly config: MeshConfig
  /**
   * The state directory: the CA in `ca/` (`ca.pem`, and `ca-key.pem` and
   * `jwt-key.pem` mode 0600), node credentials in `nodes/` (0600), the local
   * API's socket and the CA service's socket (see `paths.ts`).
   */
  readonly stateDir: string
  /** Default: silent. */
  readonly logger?: Logger
}

/** A running control plane. */
export interface ControlPlane extends Closable {
  state(): MeshState
}

interface PodEntry {
  pod: PodConfig
  netnsPath: string
}

/**
 * Each node's credential for the CA service: 32 random bytes in a file only
 * root can read, created on first start and kept across restarts. The node
 * agent of that node reads it; a pod cannot.
 */
async function loadOrCreateNodeCredentials(config: MeshConfig, dir: string): Promise<NodeCredential[]> {
  await mkdir(join(dir, 'nodes'), { recursive: true, mode: 0o700 })
  return Promise.all(config.nodes.map(async ({ name }) => {
    const file = state.nodeCredential(name, dir)
    try {
      return { node: name, credential: (await readFile(file, 'utf8')).trim() }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    const credential = randomBytes(32).toString('base64url')
    await writeFile(file, `${credential}\n`, { mode: 0o600 })
    return { node: name, credential }
  }))
}

async function loadOrCreateJwtIssuer(dir: string, trustDomain: string): Promise<JwtSvidIssuer> {
  const keyFile = join(dir, 'jwt-key.pem')
  try {
    return await createJwtSvidIssuer({ trustDomain, privateKey: await readFile(keyFile, 'utf8') })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const issuer = await createJwtSvidIssuer({ trustDomain })
  await writeFile(keyFile, issuer.privateKeyPem(), { mode: 0o600 })
  return issuer
}

async function loadOrCreateCa(dir: string, trustDomain: string): Promise<CertificateAuthority> {
  const certFile = join(dir, 'ca.pem')
  const keyFile = join(dir, 'ca-key.pem')
  try {
    const [certificateChainPem, privateKeyPem] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8')])
    const ca = loadCertificateAuthority({ certificateChainPem, privateKeyPem })
    if (ca.trustDomain.name === trustDomain) return ca
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const ca = await createCertificateAuthority({ trustDomain })
  await saveCa(dir, ca)
  return ca
}

/** Writes the CA (key 0600, then certificate): what the next start, and node agents' first bundle, read. */
async function saveCa(dir: string, ca: CertificateAuthority): Promise<void> {
  const pem = ca.save()
  await mkdir(dir, { recursive: true, mode: 0o700 })
  await writeFile(join(dir, 'ca-key.pem'), pem.privateKeyPem, { mode: 0o600 })
  await writeFile(join(dir, 'ca.pem'), pem.certificateChainPem, { mode: 0o644 })
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

const MAX_BODY = 1024 * 1024

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY) throw new HttpError(413, `request body larger than ${MAX_BODY} bytes`)
    chunks.push(chunk)
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new HttpError(400, 'request body is not JSON')
  }
}

/**
 * Starts the local control plane: the mesh's CA, workload registry and
 * policies, from mesh.yaml, served on a unix socket (see docs/architecture.md,
 * "The local API").
 */
export async function createControlPlane(options: ControlPlaneOptions): Promise<ControlPlane> {
  const { config } = options
  const log = (options.logger ?? silentLogger).child({ component: 'control-plane' })
  const dir = options.stateDir
  const socketPath = state.socket(dir)
  let ca = await loadOrCreateCa(state.caDir(dir), config.trustDomain)
  // A root rotation in progress: the new CA, trusted beside the old one before it signs.
  let next: CertificateAuthority | undefined
  const jwt = await loadOrCreateJwtIssuer(state.caDir(dir), config.trustDomain)
  const nodeCredentials = await loadOrCreateNodeCredentials(config, dir)
  const bundles = createTrustBundleSet([TrustBundle.create({ trustDomain: ca.trustDomain, x509Authorities: ca.bundle.x509Authorities, jwtAuthorities: [jwt.authority] })])
  const registry = createWorkloadRegistry()
  const policies = createPolicyStore(config.policies)
  const pods = new Map<string, PodEntry>()
  for (const pod of config.pods) pods.set(podUid(pod), { pod, netnsPath: netnsPath(netnsName.pod(pod)) })

  let revision = 0
  let current: MeshState
  const watchers = new Set<ServerResponse>()
  const rebuild = (): void => {
    const all = [...pods.values()].map((e) => e.pod)
    registry.replaceAll({
      workloads: all.map((p) => podWorkload(p, config.trustDomain)),
      services: config.services.map((s) => serviceEntry(s, all, config.trustDomain)),
    })
    revision += 1
    const snapshot = registry.snapshot()
    current = {
      revision,
      trustDomain: config.trustDomain,
      svidTtlSeconds: config.svidTtlSeconds,
      workloads: snapshot.workloads,
      services: snapshot.services,
      policies: policies.list(),
      pods: [...pods].map(([uid, e]) => ({ uid, netnsPath: e.netnsPath })),
      proxy: config.proxy,
      capture: config.capture,
    }
    const line = `${JSON.stringify(current)}\n`
    for (const res of watchers) res.write(line)
    log.info({ revision, workloads: snapshot.workloads.length, policies: current.policies.length }, 'state changed')
  }
  rebuild()

  const setRoots = (roots: readonly CertificateAuthority[]): void =>
    bundles.set(TrustBundle.create({ trustDomain: ca.trustDomain, x509Authorities: roots.map((c) => c.certificate), jwtAuthorities: [jwt.authority] }))

  /**
   * A CA root rotation in three steps, each applied under traffic: the new
   * root joins the bundle (every node trusts both), then the new CA signs
   * (SVIDs renew onto it at half-life), then the old root leaves (after the
   * longest SVID lifetime, when nothing it signed is in use).
   */
  const rotateCa = async (step: unknown): Promise<unknown> => {
    if (step === 'add-root') {
      if (next !== undefined) throw new HttpError(409, 'a rotation is in progress: switch, then remove-old-root')
      next = await createCertificateAuthority({ trustDomain: config.trustDomain })
      setRoots([ca, next])
    } else if (step === 'switch') {
      if (next === undefined) throw new HttpError(409, 'add-root first')
      const previous = ca
      ca = next
      next = previous
      await saveCa(state.caDir(dir), ca)
      // New handshakes with the CA service get a certificate of the new signer.
      await own.rotate(controlPlaneId(config.trustDomain))
    } else if (step === 'remove-old-root') {
      if (next === undefined || next === ca) throw new HttpError(409, 'switch first')
      next = undefined
      setRoots([ca])
    } else {
      throw new HttpError(400, 'expected {"step": "add-root" | "switch" | "remove-old-root"}')
    }
    const roots = bundles.get(ca.trustDomain)!.x509Authorities
    log.info({ step, roots: roots.length }, 'CA rotation step applied')
    return { step, roots: roots.map((c) => c.fingerprint256), signer: ca.certificate.fingerprint256 }
  }

  const routes = async (req: IncomingMessage, res: ServerResponse): Promise<unknown> => {
    const url = new URL(req.url ?? '/', 'http://control-plane')
    const method = req.method ?? 'GET'
    const podMatch = /^\/v1\/pods\/([^/]+)$/.exec(url.pathname)
    if (method === 'GET' && url.pathname === '/v1/healthz') return { ok: true, revision, watchers: watchers.size }
    if (method === 'GET' && url.pathname === '/v1/snapshot') return current
    if (method === 'GET' && url.pathname === '/v1/bundle') return bundles.get(ca.trustDomain)!.toJwks()
    if (method === 'GET' && url.pathname === '/v1/watch') {
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' })
      res.write(`${JSON.stringify(current)}\n`)
      watchers.add(res)
      res.on('close', () => watchers.delete(res))
      return undefined
    }
    if (podMatch !== null && method === 'PUT') {
      const uid = decodeURIComponent(podMatch[1]!)
      const body = (await readJson(req)) as Record<string, unknown>
      const { netns, ...spec } = body
      const pod = validatePod(`pod ${uid}`, spec, config.nodes)
      if (podUid(pod) !== uid) throw new HttpError(400, `pod ${uid}: the uid must be "<namespace>.<name>" = "${podUid(pod)}"`)
      const clash = [...pods.values()].find((e) => e.pod.ip === pod.ip && podUid(e.pod) !== uid)
      if (clash !== undefined) throw new HttpError(409, `pod ${uid}: ip ${pod.ip} is already pod ${podUid(clash.pod)}'s`)
      if (netns !== undefined && (typeof netns !== 'string' || !netns.startsWith('/'))) throw new HttpError(400, `pod ${uid}.netns: expected an absolute path`)
      pods.set(uid, { pod, netnsPath: (netns as string | undefined) ?? netnsPath(netnsName.pod(pod)) })
      rebuild()
      return { uid, revision }
    }
    if (podMatch !== null && method === 'DELETE') {
      const uid = decodeURIComponent(podMatch[1]!)
      if (!pods.delete(uid)) throw new HttpError(404, `no pod ${uid}`)
      rebuild()
      return { uid, revision }
    }
    if (method === 'POST' && url.pathname === '/v1/ca/rotate') return rotateCa(((await readJson(req)) as { step?: unknown } | null)?.step)
    if (method === 'PUT' && url.pathname === '/v1/policies') {
      const body = await readJson(req)
      const list = Array.isArray(body) ? body : (body as { policies?: unknown } | null)?.policies
      if (!Array.isArray(list)) throw new HttpError(400, 'expected a JSON list of policies, or {"policies": [...]}')
      // Exactly mesh.yaml's rules: a policy store keyed by name would keep only the last of two namesakes.
      const validated = validatePolicies('policies', list)
      policies.replaceAll(validated)
      rebuild()
      return { policies: validated.length, revision }
    }
    throw new HttpError(404, `no route ${method} ${url.pathname} (see docs/architecture.md, "The local API")`)
  }

  const server: Server = createServer((req, res) => {
    routes(req, res).then(
      (body) => {
        if (body === undefined) return
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(`${JSON.stringify(body)}\n`)
      },
      (err: unknown) => {
        const status = err instanceof HttpError ? err.status : isAmbientError(err) ? 400 : 500
        const code = isAmbientError(err) ? err.code : undefined
        if (status === 500) log.error({ err }, 'request failed')
        res.writeHead(status, { 'content-type': 'application/json' })
        res.end(`${JSON.stringify({ error: { status, ...(code ? { code } : {}), message: (err as Error).message } })}\n`)
      },
    )
  })
  await rm(socketPath, { force: true })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(socketPath, () => {
      server.off('error', reject)
      resolve()
    })
  })
  await chmod(socketPath, 0o600)

  // The CA service: Istio's certificate API, TLS with the control plane's own
  // SVID, node agents authenticated by their node credential and allowed the
  // identities of the mesh pods scheduled on their node only.
  // Its own SVID comes from the CA signing now, so it follows a rotation.
  const own = createIdentityManager({ source: { bundles, fetch: (id, o) => ca.issue(id, { ttlSeconds: o.ttlSeconds, signal: o.signal }) }, logger: log })
  const auditFile = state.caAudit(dir)
  await mkdir(state.logs(dir), { recursive: true })
  let auditFailures = 0
  const caServer = await createCaServer({
    ca: () => ca,
    bundles,
    jwtIssuer: jwt,
    authenticators: [
      createNodeCredentialAuthenticator({ nodes: nodeCredentials, identity: nodeAgentId(config.trustDomain) }),
      createSvidAuthenticator(),
    ],
    trustedNodeAccounts: ['ambientkit-system/ambientkit-node'],
    pods: {
      hasPod: async (q) => [...pods.values()].some(({ pod }) => pod.mesh && pod.node === q.node && pod.namespace === q.namespace && pod.serviceAccount === q.serviceAccount),
    },
    maxTtlSeconds: config.svidTtlSeconds,
    defaultTtlSeconds: config.svidTtlSeconds,
    tls: { manager: own, id: controlPlaneId(config.trustDomain) },
    listen: { path: state.caSocket(dir) },
    // A full disk must not stop issuance: failures are counted and reported, never thrown.
    audit: (entry: AuditEntry) => {
      appendFile(auditFile, `${JSON.stringify(entry)}\n`).catch((err: unknown) => {
        auditFailures += 1
        if (auditFailures === 1 || auditFailures % 100 === 0) log.error({ err, failures: auditFailures }, 'cannot write the CA audit log')
      })
    },
    logger: log,
  })
  log.info({ socket: socketPath, ca: state.caSocket(dir), trustDomain: config.trustDomain, pods: pods.size }, 'control plane listening')

  let closing: Promise<void> | undefined
  return {
    state: () => current,
    close() {
      closing ??= (async () => {
        for (const res of watchers) res.end()
        server.closeAllConnections()
        await Promise.all([new Promise<void>((resolve) => server.close(() => resolve())), caServer.close()])
        await own.close()
        await rm(socketPath, { force: true })
      })()
      return closing
    },
  }
}

