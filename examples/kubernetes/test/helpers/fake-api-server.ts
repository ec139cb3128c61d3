import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { KubeConfig, type KubernetesObject } from '@kubernetes/client-node'

type EventType = 'ADDED' | 'MODIFIED' | 'DELETED'

interface Recorded {
  rv: number
  type: EventType
  object: KubernetesObject
}

interface OpenWatch {
  res: ServerResponse
  matches: (object: KubernetesObject) => boolean
}

/** One resource collection (`/api/v1/pods`...) of a {@link FakeApiServer}. */
export interface FakeResource {
  /** Applies an event to the stored objects and sends it to every open watch it matches. */
  emit(type: EventType, object: KubernetesObject): void
  /** Applies a change to the stored objects without telling open watches (a change made while the client was away). */
  setQuietly(type: EventType, object: KubernetesObject): void
  /** Makes every resource version up to now too old: open watches get `ERROR 410 Gone` and end, as do watches from older versions. */
  expire(): void
  /** Ends every open watch normally, as an API server does when a watch times out. */
  endWatches(): void
  /** The next `count` requests (list or watch) get `status`. */
  failNext(status: number, count?: number): void
  /** Holds the headers of watch requests from now on until the returned function is called. */
  holdWatches(): () => void
  /** Resolves with the query of the next watch request. */
  nextWatch(): Promise<URLSearchParams>
  /** Resolves with the query of the next list request. */
  nextList(): Promise<URLSearchParams>
  readonly openWatches: number
  /** Resolves once no watch is open (the client hung up). */
  whenNoWatches(): Promise<void>
}

/** A small HTTP server on 127.0.0.1 that speaks the Kubernetes list and watch protocol. */
export interface FakeApiServer {
  readonly url: string
  /** A KubeConfig pointing at this server, with a bearer token. */
  kubeConfig(): KubeConfig
  /** Every request seen: method, URL, Authorization header, answered status. */
  readonly requests: { method: string; url: string; authorization: string | undefined; status: number }[]
  resource(path: string): FakeResource
  close(): Promise<void>
}

export const TOKEN = 'test-token-9f8e7d'

// Field selectors as the API server applies them to pods: `a.b=c` equality terms, comma-separated.
function selector(query: URLSearchParams): (object: KubernetesObject) => boolean {
  const raw = query.get('fieldSelector')
  if (raw === null || raw === '') return () => true
  const terms = raw.split(',').map((term) => {
    const [path, value] = term.split('=') as [string, string]
    return { path: path.split('.'), value }
  })
  return (object) =>
    terms.every(({ path, value }) => {
      let v: unknown = object
      for (const part of path) v = (v as Record<string, unknown> | undefined)?.[part]
      return (v ?? '') === value
    })
}

const objectKey = (o: KubernetesObject): string => `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`

class Resource implements FakeResource {
  readonly objects = new Map<string, KubernetesObject>()
  readonly history: Recorded[] = []
  readonly watches = new Set<OpenWatch>()
  readonly watchWaiters: ((q: URLSearchParams) => void)[] = []
  readonly listWaiters: ((q: URLSearchParams) => void)[] = []
  expiredBefore = 0
  failures: number[] = []
  held: (() => void)[] | undefined

  constructor(
    readonly kind: string,
    readonly clock: { rv: number },
  ) {}

  readonly idleWaiters: (() => void)[] = []

  get openWatches(): number {
    return this.watches.size
  }

  whenNoWatches(): Promise<void> {
    if (this.watches.size === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  #apply(type: EventType, object: KubernetesObject): Recorded {
    const rv = ++this.clock.rv
    const copy = structuredClone(object)
    copy.metadata = { ...copy.metadata, resourceVersion: String(rv) }
    if (type === 'DELETED') this.objects.delete(objectKey(copy))
    else this.objects.set(objectKey(copy), copy)
    const recorded = { rv, type, object: copy }
    this.history.push(recorded)
    return recorded
  }

  emit(type: EventType, object: KubernetesObject): void {
    const recorded = this.#apply(type, object)
    for (const watch of this.watches) if (watch.matches(recorded.object)) send(watch.res, recorded)
  }

  setQuietly(type: EventType, object: KubernetesObject): void {
    const recorded = this.#apply(type, object)
    // Never replayed: the history before an expiry is compacted away.
    recorded.rv = -1
  }

  expire(): void {
    this.expiredBefore = this.clock.rv + 1
    for (const watch of this.watches) {
      gone(watch.res)
      watch.res.end()
    }
    this.watches.clear()
  }

  endWatches(): void {
    for (const watch of this.watches) watch.res.end()
    this.watches.clear()
  }

  failNext(status: number, count = 1): void {
    for (let i = 0; i < count; i++) this.failures.push(status)
  }

  holdWatches(): () => void {
    this.held = []
    return () => {
      const held = this.held ?? []
      this.held = undefined
      for (const go of held) go()
    }
  }

  nextWatch(): Promise<URLSearchParams> {
    return new Promise((resolve) => this.watchWaiters.push(resolve))
  }

  nextList(): Promise<URLSearchParams> {
    return new Promise((resolve) => this.listWaiters.push(resolve))
  }

  handle(query: URLSearchParams, res: ServerResponse): number {
    const failure = this.failures.shift()
    const watching = query.get('watch') === 'true'
    const waiters = watching ? this.watchWaiters : this.listWaiters
    for (const waiter of waiters.splice(0)) waiter(query)
    if (failure !== undefined) {
      res.writeHead(failure, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'injected failure', code: failure }))
      return failure
    }
    const matches = selector(query)
    if (!watching) {
      const items = [...this.objects.values()].filter(matches)
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ kind: `${this.kind}List`, apiVersion: 'v1', metadata: { resourceVersion: String(this.clock.rv) }, items }))
      return 200
    }
    if (this.held !== undefined) {
      this.held.push(() => this.#watch(query, res, matches))
      return 200
    }
    this.#watch(query, res, matches)
    return 200
  }

  // A watch: 200 and one JSON object per line, chunked, for as long as it lasts.
  #watch(query: URLSearchParams, res: ServerResponse, matches: (object: KubernetesObject) => boolean): void {
    if (res.destroyed) return
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' })
    // As the API server does: the client's request resolves on the headers, before any event.
    res.flushHeaders()
    const from = Number(query.get('resourceVersion') ?? '0')
    if (from < this.expiredBefore - 1) {
      gone(res)
      res.end()
      return
    }
    for (const recorded of this.history) if (recorded.rv > from && matches(recorded.object)) send(res, recorded)
    const watch = { res, matches }
    this.watches.add(watch)
    res.on('close', () => {
      this.watches.delete(watch)
      if (this.watches.size === 0) for (const waiter of this.idleWaiters.splice(0)) waiter()
    })
  }
}

function send(res: ServerResponse, recorded: Recorded): void {
  res.write(`${JSON.stringify({ type: recorded.type, object: recorded.object })}\n`)
}

// What an API server sends when the requested resource version was compacted.
function gone(res: ServerResponse): void {
  res.write(
    `${JSON.stringify({
      type: 'ERROR',
      object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'too old resource version', reason: 'Expired', code: 410 },
    })}\n`,
  )
}

/** Starts a {@link FakeApiServer} serving pods, namespaces, services and endpoint slices. */
export async function startFakeApiServer(): Promise<FakeApiServer> {
  const clock = { rv: 1000 }
  const resources = new Map<string, Resource>([
    ['/api/v1/pods', new Resource('Pod', clock)],
    ['/api/v1/namespaces', new Resource('Namespace', clock)],
    ['/api/v1/services', new Resource('Service', clock)],
    ['/apis/discovery.k8s.io/v1/endpointslices', new Resource('EndpointSlice', clock)],
  ])
  const requests: FakeApiServer['requests'] = []
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1')
    const resource = resources.get(url.pathname)
    const entry = { method: req.method ?? '', url: req.url ?? '', authorization: req.headers.authorization, status: 404 }
    requests.push(entry)
    if (resource === undefined || req.method !== 'GET') {
      res.writeHead(404, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'NotFound', code: 404 }))
      return
    }
    entry.status = resource.handle(url.searchParams, res)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return {
    url,
    requests,
    kubeConfig() {
      const kc = new KubeConfig()
      kc.loadFromOptions({
        clusters: [{ name: 'fake', server: url, skipTLSVerify: true }],
        users: [{ name: 'agent', token: TOKEN }],
        contexts: [{ name: 'fake', cluster: 'fake', user: 'agent' }],
        currentContext: 'fake',
      })
      return kc
    },
    resource(path) {
      const resource = resources.get(path)
      if (resource === undefined) throw new Error(`the fake API server does not serve ${path}`)
      return resource
    },
    async close() {
      for (const resource of resources.values()) resource.endWatches()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

/** Collects events and hands them out in order: `await queue.next()`. */
export class EventQueue<T> {
  readonly #items: T[] = []
  readonly #waiters: ((item: T) => void)[] = []
  readonly push = (item: T): void => {
    const waiter = this.#waiters.shift()
    if (waiter !== undefined) waiter(item)
    else this.#items.push(item)
  }

  next(): Promise<T> {
    const item = this.#items.shift()
    if (item !== undefined) return Promise.resolve(item)
    return new Promise((resolve) => this.#waiters.push(resolve))
  }

  /** Events received and not yet taken. */
  drain(): T[] {
    return this.#items.splice(0)
  }
}
