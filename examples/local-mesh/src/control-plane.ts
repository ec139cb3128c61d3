import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { join } from 'node:path'
import {
  createPolicyStore,
  createWorkloadRegistry,
  isAmbientError,
  parseWorkloadIdentity,
  silentLogger,
  workloadIdentity,
  type AuthorizationPolicy,
  type Closable,
  type Logger,
  type Service,
  type Workload,
} from '@ambientkit/core'
import { createCertificateAuthority, loadCertificateAuthority, type CertificateAuthority } from '@ambientkit/identity'
import { podUid, podWorkload, serviceEntry, validatePod, validatePolicies, type MeshConfig, type PodConfig } from './config'
import { netnsName, netnsPath } from './paths'

/**
 * What `GET /v1/snapshot` returns and every line of `GET /v1/watch` carries:
 * the whole desired state. Small meshes make level-triggered updates the
 * simple and robust choice: a watcher that missed lines loses nothing.
 */
export interface MeshState {
  /** Increases by one on every change. */
  readonly revision: number
  readonly trustDomain: string
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
  /** The CA is kept in `<caDir>/ca.pem` and `<caDir>/ca-key.pem` (mode 0600), created on first start. */
  readonly caDir: string
  /** The unix socket of the local API (mode 0600: root only). */
  readonly socketPath: string
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
  const pem = ca.save()
  await mkdir(dir, { recursive: true, mode: 0o700 })
  await writeFile(keyFile, pem.privateKeyPem, { mode: 0o600 })
  await writeFile(certFile, pem.certificateChainPem, { mode: 0o644 })
  return ca
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
  const ca = await loadOrCreateCa(options.caDir, config.trustDomain)
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

  const routes = async (req: IncomingMessage, res: ServerResponse): Promise<unknown> => {
    const url = new URL(req.url ?? '/', 'http://control-plane')
    const method = req.method ?? 'GET'
    const podMatch = /^\/v1\/pods\/([^/]+)$/.exec(url.pathname)
    if (method === 'GET' && url.pathname === '/v1/healthz') return { ok: true, revision }
    if (method === 'GET' && url.pathname === '/v1/snapshot') return current
    if (method === 'GET' && url.pathname === '/v1/bundle') return ca.bundle.toJwks()
    if (method === 'GET' && url.pathname === '/v1/watch') {
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' })
      res.write(`${JSON.stringify(current)}\n`)
      watchers.add(res)
      res.on('close', () => watchers.delete(res))
      return undefined
    }
    if (method === 'POST' && url.pathname === '/v1/svid') {
      const body = (await readJson(req)) as { id?: unknown; csr?: unknown; node?: unknown; ttlSeconds?: unknown }
      if (typeof body.id !== 'string' || typeof body.csr !== 'string' || typeof body.node !== 'string') {
        throw new HttpError(400, 'expected {"id": "spiffe://...", "csr": "<PEM PKCS#10>", "node": "<node name>"}')
      }
      // A node may only obtain identities of mesh pods scheduled on it, as
      // Istio's CA checks a ztunnel's requests against its node's pods.
      const parts = parseWorkloadIdentity(body.id)
      const entitled = [...pods.values()].some(
        (e) => e.pod.node === body.node && e.pod.mesh && workloadIdentity({ ...e.pod, trustDomain: config.trustDomain }) === body.id,
      )
      if (parts === undefined || !entitled) throw new HttpError(403, `node ${body.node} runs no mesh pod with identity ${body.id}`)
      const ttl = typeof body.ttlSeconds === 'number' ? Math.min(body.ttlSeconds, config.svidTtlSeconds) : config.svidTtlSeconds
      const signed = await ca.signCsr(body.csr, { id: body.id, ttlSeconds: ttl })
      log.info({ id: body.id, node: body.node, notAfter: signed.notAfter.toISOString() }, 'signed SVID')
      return { certificateChainPem: signed.certificateChainPem, notBefore: signed.notBefore.toISOString(), notAfter: signed.notAfter.toISOString() }
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
  await rm(options.socketPath, { force: true })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.socketPath, () => {
      server.off('error', reject)
      resolve()
    })
  })
  await chmod(options.socketPath, 0o600)
  log.info({ socket: options.socketPath, trustDomain: config.trustDomain, pods: pods.size }, 'control plane listening')

  let closing: Promise<void> | undefined
  return {
    state: () => current,
    close() {
      closing ??= (async () => {
        for (const res of watchers) res.end()
        server.closeAllConnections()
        await new Promise<void>((resolve) => server.close(() => resolve()))
        await rm(options.socketPath, { force: true })
      })()
      return closing
    },
  }
}

