import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { request as httpsRequest } from 'node:https'
import { request as httpRequest } from 'node:http'
import { AmbientError, invalidArgument, type AbortOptions } from '@ambientkit/core'
import { SpiffeId, TrustDomain } from '@ambientkit/identity'
import { bearerToken, type AuthenticatedCaller, type Authenticator } from './authenticate'
import { CaErrorCode } from './errors'

/** How the CA reaches the Kubernetes API: TokenReviews and pod reads, nothing else. */
export interface KubernetesApi {
  /** `POST` or `GET` a path of the API; resolves with the parsed JSON of a 2xx answer, rejects with `ERR_AMBIENT_KUBERNETES_API`. */
  call(method: 'GET' | 'POST', path: string, body: unknown, options?: AbortOptions): Promise<unknown>
}

/** Options of {@link createKubernetesApi}. */
export interface KubernetesApiOptions {
  /** The API server, `https://host:port` (`http://` for a test server only). */
  readonly url: string
  /** The CA certificates of the API server, PEM. Default: the system's. */
  readonly caPem?: string
  /** The control plane's own service-account token, read per request (it rotates). */
  readonly token: () => string
  /** Per-request time limit. Default 5000 ms. */
  readonly timeoutMs?: number
}

// API answers the CA reads are one object; anything larger is not one of them.
const MAX_ANSWER_BYTES = 4 * 1024 * 1024

/** A minimal client of the Kubernetes API for the CA's two needs. */
export function createKubernetesApi(options: KubernetesApiOptions): KubernetesApi {
  const base = new URL(options.url)
  if (base.protocol !== 'https:' && base.protocol !== 'http:') throw invalidArgument('url', options.url, 'an https:// URL of the API server')
  const timeoutMs = options.timeoutMs ?? 5000
  return {
    call(method, path, body, callOptions = {}) {
      return new Promise((resolve, reject) => {
        const payload = body === undefined ? undefined : JSON.stringify(body)
        const url = new URL(path, base)
        const fail = (status: number | undefined, message: string, cause?: unknown): void =>
          reject(new AmbientError(CaErrorCode.KubernetesApi, `Kubernetes API ${method} ${url.pathname}: ${message}`, { cause, details: { status } }))
        const send = base.protocol === 'https:' ? httpsRequest : httpRequest
        const req = send(url, {
          method,
          headers: { authorization: `Bearer ${options.token()}`, accept: 'application/json', ...(payload ? { 'content-type': 'application/json' } : {}) },
          ...(options.caPem ? { ca: options.caPem } : {}),
          timeout: timeoutMs,
          ...(callOptions.signal ? { signal: callOptions.signal } : {}),
        }, (res) => {
          const chunks: Buffer[] = []
          let size = 0
          res.on('data', (chunk: Buffer) => {
            size += chunk.length
            if (size > MAX_ANSWER_BYTES) {
              res.destroy()
              fail(res.statusCode, `answer larger than ${MAX_ANSWER_BYTES} bytes`)
            } else chunks.push(chunk)
          })
          res.on('error', (err) => fail(res.statusCode, err.message, err))
          res.on('end', () => {
            const status = res.statusCode ?? 0
            let parsed: unknown
            try {
              parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'))
            } catch (err) {
              return fail(status, `HTTP ${status}, not JSON`, err)
            }
            if (status < 200 || status >= 300) return fail(status, `HTTP ${status}: ${(parsed as { message?: string })?.message ?? ''}`)
            resolve(parsed)
          })
        })
        req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)))
        req.on('error', (err) => fail(undefined, err.message, err))
        req.end(payload)
      })
    },
  }
}

/**
 * The API as seen from a pod: `KUBERNETES_SERVICE_HOST`/`_PORT`, the pod's
 * service-account token and the cluster's CA from
 * `/var/run/secrets/kubernetes.io/serviceaccount`.
 */
export function kubernetesApiInCluster(env: NodeJS.ProcessEnv = process.env, dir = '/var/run/secrets/kubernetes.io/serviceaccount'): KubernetesApi {
  const host = env.KUBERNETES_SERVICE_HOST
  const port = env.KUBERNETES_SERVICE_PORT ?? '443'
  if (host === undefined || host === '') throw invalidArgument('KUBERNETES_SERVICE_HOST', host, 'the API server address (set in every pod)')
  return createKubernetesApi({
    url: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
    caPem: readFileSync(`${dir}/ca.crt`, 'utf8'),
    token: () => readFileSync(`${dir}/token`, 'utf8').trim(),
  })
}

/** Options of {@link createKubernetesTokenAuthenticator}. */
export interface KubernetesTokenAuthenticatorOptions {
  readonly api: KubernetesApi
  /** The mesh's trust domain: a token of `ns/sa` is `spiffe://<td>/ns/<ns>/sa/<sa>`. */
  readonly trustDomain: TrustDomain | string
  /** Audiences a token must have been issued for. Default `['istio-ca']`, as istiod and ztunnel's projected token. */
  readonly audiences?: readonly string[]
  /** How long a successful review is reused (never past the token's own `exp`). Default 60 000 ms; 0 disables the cache. */
  readonly cacheTtlMs?: number
  /** Most reviews kept. Default 10 000. */
  readonly cacheSize?: number
}

const POD_NAME = 'authentication.kubernetes.io/pod-name'
const POD_UID = 'authentication.kubernetes.io/pod-uid'
const SA_PREFIX = 'system:serviceaccount:'

interface TokenReviewStatus {
  authenticated?: boolean
  error?: string
  audiences?: string[]
  user?: { username?: string; extra?: Record<string, string[] | undefined> }
}

interface PodObject {
  metadata?: { name?: string; namespace?: string; uid?: string }
  spec?: { nodeName?: string; serviceAccountName?: string }
  status?: { phase?: string }
}

/** The `exp` of a JWT, read without verifying it: only ever used to shorten a cache entry. */
function tokenExpiry(token: string): number | undefined {
  try {
    const exp = (JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { exp?: unknown }).exp
    return typeof exp === 'number' ? exp * 1000 : undefined
  } catch {
    return undefined
  }
}

/**
 * Authenticates callers by a Kubernetes service-account token in
 * `authorization: Bearer <token>`, checked by a TokenReview against the API
 * server with the configured audiences (istiod's rule). The caller's
 * identity is its service account's SPIFFE ID. A pod-bound token (projected
 * service-account tokens are) also yields the caller's node: the bound pod
 * is read and must exist with the token's pod UID and service account, as
 * istiod checks, and its `spec.nodeName` is the node.
 *
 * Reviews are cached by the token's SHA-256 for `cacheTtlMs`, never past the
 * token's expiry; refusals are not cached.
 */
export function createKubernetesTokenAuthenticator(options: KubernetesTokenAuthenticatorOptions): Authenticator {
  const trustDomain = typeof options.trustDomain === 'string' ? TrustDomain.parse(options.trustDomain) : options.trustDomain
  const audiences = options.audiences ?? ['istio-ca']
  if (!Array.isArray(audiences) || audiences.length === 0) throw invalidArgument('audiences', audiences, 'at least one audience')
  const cacheTtlMs = options.cacheTtlMs ?? 60_000
  const cacheSize = options.cacheSize ?? 10_000
  const cache = new Map<string, { caller: AuthenticatedCaller; until: number }>()
  const pending = new Map<string, Promise<AuthenticatedCaller>>()

  const review = async (token: string, signal: AbortSignal | undefined): Promise<AuthenticatedCaller> => {
    const answer = (await options.api.call('POST', '/apis/authentication.k8s.io/v1/tokenreviews', {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenReview',
      spec: { token, audiences },
    }, { signal })) as { status?: TokenReviewStatus }
    const status = answer.status ?? {}
    if (status.authenticated !== true) throw new Error(`TokenReview: not authenticated${status.error ? `: ${status.error}` : ''}`)
    // The API server lists the audiences it checked; none of ours means the token is for someone else.
    if (status.audiences !== undefined && !status.audiences.some((a) => audiences.includes(a))) {
      throw new Error(`TokenReview: the token's audiences ${JSON.stringify(status.audiences)} include none of ${JSON.stringify(audiences)}`)
    }
    const username = status.user?.username ?? ''
    const parts = username.startsWith(SA_PREFIX) ? username.slice(SA_PREFIX.length).split(':') : []
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') throw new Error(`TokenReview: ${JSON.stringify(username)} is not a service account`)
    const [namespace, serviceAccount] = parts as [string, string]
    const identity = SpiffeId.fromServiceAccount(trustDomain, namespace, serviceAccount)
    const podName = status.user?.extra?.[POD_NAME]?.[0]
    const podUid = status.user?.extra?.[POD_UID]?.[0]
    if (podName === undefined || podUid === undefined) return { identity, method: 'kubernetes-token', details: { serviceAccount: `${namespace}/${serviceAccount}` } }
    const pod = (await options.api.call('GET', `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(podName)}`, undefined, { signal })) as PodObject
    if (pod.metadata?.uid !== podUid) throw new Error(`the token is bound to pod ${namespace}/${podName} uid ${podUid}, which no longer exists (uid now ${pod.metadata?.uid})`)
    if ((pod.spec?.serviceAccountName ?? 'default') !== serviceAccount) throw new Error(`pod ${namespace}/${podName} does not run as ${serviceAccount}`)
    const node = pod.spec?.nodeName
    return {
      identity,
      method: 'kubernetes-token',
      ...(node ? { node } : {}),
      details: { serviceAccount: `${namespace}/${serviceAccount}`, pod: `${namespace}/${podName}` },
    }
  }

  return {
    name: 'kubernetes-token',
    async authenticate(call) {
      const token = bearerToken(call)
      if (token === undefined) return undefined
      const key = createHash('sha256').update(token).digest('base64')
      const now = Date.now()
      const hit = cache.get(key)
      if (hit !== undefined && hit.until > now) return hit.caller
      let shared = pending.get(key)
      if (shared === undefined) {
        // Shared by every call with this token, so no one call's signal cancels it: the API timeout bounds it.
        shared = review(token, undefined).finally(() => pending.delete(key))
        pending.set(key, shared)
      }
      const caller = await shared
      const until = Math.min(now + cacheTtlMs, tokenExpiry(token) ?? Infinity)
      if (cacheTtlMs > 0 && until > now) {
        cache.delete(key)
        cache.set(key, { caller, until })
        if (cache.size > cacheSize) cache.delete(cache.keys().next().value!)
      }
      return caller
    },
  }
}

/** Where the CA learns which pods run on which node: what Istio's impersonation rule checks. */
export interface PodDirectory {
  /** Whether a pod of `namespace` running as `serviceAccount`, not Failed, is scheduled on `node`. */
  hasPod(query: { namespace: string; serviceAccount: string; node: string }, options?: AbortOptions): Promise<boolean>
}

/** Options of {@link createKubernetesPodDirectory}. */
export interface KubernetesPodDirectoryOptions {
  readonly api: KubernetesApi
  /** How long one node's pod list is reused. Default 2000 ms. */
  readonly cacheTtlMs?: number
}

/**
 * A {@link PodDirectory} reading the pods of a namespace on a node from the
 * API (`fieldSelector=spec.nodeName=<node>`), each list reused for
 * `cacheTtlMs`.
 */
export function createKubernetesPodDirectory(options: KubernetesPodDirectoryOptions): PodDirectory {
  const cacheTtlMs = options.cacheTtlMs ?? 2000
  const cache = new Map<string, { pods: Promise<PodObject[]>; until: number }>()
  return {
    async hasPod({ namespace, serviceAccount, node }, callOptions = {}) {
      const key = `${namespace}\n${node}`
      const now = Date.now()
      let entry = cache.get(key)
      if (entry === undefined || entry.until <= now) {
        const selector = encodeURIComponent(`spec.nodeName=${node}`)
        const pods = options.api
          .call('GET', `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods?fieldSelector=${selector}`, undefined, callOptions)
          .then((list) => (list as { items?: PodObject[] }).items ?? [])
        entry = { pods, until: now + cacheTtlMs }
        cache.set(key, entry)
        // A failed read is not reused.
        pods.catch(() => cache.get(key) === entry && cache.delete(key))
        for (const [k, e] of cache) if (e.until <= now) cache.delete(k)
      }
      const pods = await entry.pods
      return pods.some((p) => p.spec?.nodeName === node && (p.spec?.serviceAccountName ?? 'default') === serviceAccount && p.status?.phase !== 'Failed')
    },
  }
}
