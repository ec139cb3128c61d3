import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { request, type ClientRequest } from 'node:http'
import { createInterface } from 'node:readline'
import {
  AmbientError,
  createSubscribers,
  type AbortOptions,
  type PodEnrollment,
  type PodSource,
  type PodSourceEvent,
  type WorkloadRegistry,
  type PolicyStore,
} from '@ambientkit/core'
import { createIstioCaSource, type IstioCaSource } from '@ambientkit/ca'
import type { MeshState } from './control-plane'
import { controlPlaneId, state } from './paths'

/** Error code of a failed call to the local control plane. */
export const CONTROL_PLANE_ERROR = 'ERR_AMBIENT_LOCAL_CONTROL_PLANE'

/** Calls the local API on its unix socket; resolves with the parsed JSON body, rejects on a non-2xx status. */
export function callControlPlane(socketPath: string, method: string, path: string, body?: unknown, options: AbortOptions = {}): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = request(
      { socketPath, method, path, headers: payload ? { 'content-type': 'application/json' } : {}, ...(options.signal ? { signal: options.signal } : {}) },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let parsed: unknown
          try {
            parsed = text === '' ? undefined : JSON.parse(text)
          } catch {
            parsed = text
          }
          if ((res.statusCode ?? 500) >= 300) {
            const message = (parsed as { error?: { message?: string } })?.error?.message ?? text
            reject(new AmbientError(CONTROL_PLANE_ERROR, `control plane ${method} ${path}: ${res.statusCode}: ${message}`, { details: { status: res.statusCode } }))
          } else {
            resolve(parsed)
          }
        })
      },
    )
    req.on('error', (err) =>
      reject(new AmbientError(CONTROL_PLANE_ERROR, `control plane at ${socketPath} unreachable: ${err.message}`, { cause: err })),
    )
    req.end(payload)
  })
}

/**
 * Follows `GET /v1/watch`: calls `onState` with every state line. Reconnects
 * (every second) when the control plane goes away, however it goes (a clean
 * end, a reset, a refused connection), so a node keeps serving on its last
 * state meanwhile; every failure goes to `onError`, never to an unhandled
 * `'error'` event. Returns the function that stops following.
 */
export function watchControlPlane(socketPath: string, onState: (state: MeshState) => void, onError: (err: Error) => void): () => void {
  let stopped = false
  let current: ClientRequest | undefined
  let timer: NodeJS.Timeout | undefined
  const connect = (): void => {
    if (stopped) return
    let ended = false
    // Every way this connection can end comes here once: report, then reconnect.
    const end = (err?: Error): void => {
      if (ended) return
      ended = true
      if (err !== undefined && !stopped) onError(err)
      retry()
    }
    const req = request({ socketPath, method: 'GET', path: '/v1/watch' }, (res) => {
      res.on('error', end)
      res.on('close', () => end())
      if (res.statusCode !== 200) {
        res.resume()
        end(new AmbientError(CONTROL_PLANE_ERROR, `control plane watch answered ${res.statusCode}`))
        return
      }
      const lines = createInterface({ input: res, crlfDelay: Infinity })
      // readline re-emits its input's errors; the response's own listener reports them.
      lines.on('error', () => undefined)
      lines.on('line', (line) => {
        try {
          onState(JSON.parse(line) as MeshState)
        } catch (err) {
          onError(err as Error)
        }
      })
    })
    req.on('error', end)
    req.end()
    current = req
  }
  const retry = (): void => {
    if (stopped || timer !== undefined) return
    timer = setTimeout(() => {
      timer = undefined
      connect()
    }, 1000)
  }
  connect()
  return () => {
    stopped = true
    clearTimeout(timer)
    current?.destroy()
  }
}

/**
 * A node's identity source: the control plane's CA service (Istio's
 * certificate API over TLS on a unix socket), authenticated by the node's
 * credential, which root alone can read. The key of every SVID is made here
 * and never leaves the node; the CA grants only the identities of mesh pods
 * scheduled on this node. The bundle follows the CA's (`WatchBundles`), so a
 * root rotation reaches the node at once.
 */
export function createNodeIdentitySource(dir: string, nodeName: string, trustDomain: string): IstioCaSource {
  return createIstioCaSource({
    address: `unix://${state.caSocket(dir)}`,
    trustDomain,
    // The root, until the CA's own answers and bundle stream take over.
    rootCertificates: () => readFileSync(join(state.caDir(dir), 'ca.pem'), 'utf8'),
    serverIdentity: { spiffeId: controlPlaneId(trustDomain) },
    token: () => readFileSync(state.nodeCredential(nodeName, dir), 'utf8'),
    clusterId: 'local-mesh',
    watchBundles: true,
  })
}

/** Keeps a node's registry, policies and pod source in step with the control plane. */
export interface StateFollower {
  /** The pods of this node the mesh wants captured, as a PodSource. */
  readonly podSource: PodSource
  /** Resolves once the first state has been applied. */
  readonly synced: Promise<void>
  /** The last state applied. */
  state(): MeshState | undefined
  close(): Promise<void>
}

/**
 * Follows the control plane's watch stream and applies each state to the
 * node's `registry` and `policies`, and turns the set of this node's mesh
 * pods into PodSource events (upsert for new or changed, remove for gone).
 */
export function followControlPlane(socketPath: string, nodeName: string, registry: WorkloadRegistry, policies: PolicyStore, onError: (err: Error) => void): StateFollower {
  let pods = new Map<string, PodEnrollment>()
  let last: MeshState | undefined
  const subscribers = createSubscribers<PodSourceEvent>({ what: 'control plane pod source' })
  let resolveSynced!: () => void
  const synced = new Promise<void>((resolve) => (resolveSynced = resolve))
  const apply = (state: MeshState): void => {
    last = state
    registry.replaceAll({ workloads: state.workloads, services: state.services })
    policies.replaceAll(state.policies)
    const paths = new Map(state.pods.map((p) => [p.uid, p.netnsPath]))
    const next = new Map<string, PodEnrollment>()
    for (const workload of state.workloads) {
      const path = paths.get(workload.uid)
      if (workload.node === nodeName && workload.protocol === 'HBONE' && path !== undefined) next.set(workload.uid, { workload, netnsPath: path })
    }
    const events: PodSourceEvent[] = []
    for (const uid of pods.keys()) if (!next.has(uid)) events.push({ type: 'remove', uid })
    for (const [uid, pod] of next) {
      const before = pods.get(uid)
      if (before === undefined || JSON.stringify(before) !== JSON.stringify(pod)) events.push({ type: 'upsert', pod })
    }
    pods = next
    for (const event of events) subscribers.emit(event)
    resolveSynced()
  }
  const stop = watchControlPlane(socketPath, apply, onError)
  return {
    synced,
    state: () => last,
    podSource: {
      list: async () => {
        await synced
        return [...pods.values()]
      },
      subscribe: subscribers.subscribe,
      close: async () => subscribers.clear(),
      [Symbol.asyncDispose]: async () => subscribers.clear(),
    },
    async close() {
      stop()
      subscribers.clear()
    },
  }
}
