import type { V1Pod } from '@kubernetes/client-node'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { isAmbientError, type PodSourceEvent } from '@ambientkit/core'
import { createKubernetesPodSource, type KubernetesPodSource, type KubernetesPodSourceOptions, type NetnsResolver } from '../src/index'
import { EventQueue, TOKEN, startFakeApiServer, type FakeApiServer, type FakeResource } from './helpers/fake-api-server'
import { fixtureEvents, namespace, namespaces, pod, podNames } from './helpers/fixtures'

/** A resolver over a table the test fills in, standing in for /proc (tested on its own in netns.test.ts). */
function tableResolver(): NetnsResolver & { table: Map<string, string>; calls: string[][] } {
  const table = new Map<string, string>()
  const calls: string[][] = []
  return {
    table,
    calls,
    async resolve(uids) {
      const asked = [...uids]
      calls.push(asked)
      return new Map(asked.flatMap((uid) => (table.has(uid) ? [[uid, table.get(uid)!] as const] : [])))
    },
  }
}

const uidOf = (p: V1Pod): string => p.metadata!.uid!
const netnsOf = (p: V1Pod): string => `/proc/${parseInt(uidOf(p).slice(0, 4), 16)}/ns/net`

function describeEvent(event: PodSourceEvent): string {
  return event.type === 'upsert' ? `upsert ${event.pod.workload.namespace}/${event.pod.workload.name}` : `remove ${event.uid}`
}

describe('createKubernetesPodSource against a Kubernetes API speaking list/watch on 127.0.0.1', () => {
  let api: FakeApiServer
  let pods: FakeResource
  let nsResource: FakeResource
  let resolver: ReturnType<typeof tableResolver>
  let source: KubernetesPodSource | undefined
  let events: EventQueue<PodSourceEvent>

  beforeEach(async () => {
    api = await startFakeApiServer()
    pods = api.resource('/api/v1/pods')
    nsResource = api.resource('/api/v1/namespaces')
    for (const ns of namespaces()) nsResource.emit('ADDED', ns)
    resolver = tableResolver()
    for (const name of podNames) {
      const p = pod(name)
      pods.emit('ADDED', p)
      resolver.table.set(uidOf(p), netnsOf(p))
    }
    events = new EventQueue()
  })

  afterEach(async () => {
    await source?.close()
    source = undefined
    await api.close()
  })

  function start(options: Partial<KubernetesPodSourceOptions> = {}): KubernetesPodSource {
    source = createKubernetesPodSource({
      kubeConfig: api.kubeConfig(),
      nodeName: 'worker-1',
      netnsResolver: resolver,
      netnsRetry: { initialDelayMs: 5, maxDelayMs: 20 },
      watchRestart: { initialDelayMs: 5, maxDelayMs: 20 },
      ...options,
    })
    source.subscribe(events.push)
    return source
  }

  /**
   * Emits a pod that will certainly be enrolled and waits for its upsert:
   * the watch stream is ordered, so every event sent before it has been
   * handled once it arrives, and nothing else was emitted in between.
   */
  async function barrier(label: string): Promise<PodSourceEvent[]> {
    const marker = pod('api')
    marker.metadata!.name = `marker-${label}`
    marker.metadata!.uid = `00000000-0000-4000-8000-${label.padStart(12, '0')}`
    resolver.table.set(marker.metadata!.uid, `/proc/9/ns/net`)
    pods.emit('ADDED', marker)
    const seen: PodSourceEvent[] = []
    for (;;) {
      const event = await events.next()
      if (event.type === 'upsert' && event.pod.workload.uid === marker.metadata!.uid) return seen
      seen.push(event)
    }
  }

  it('lists the ambient pods of this node with their netns, asking only for this node, with the token', async () => {
    const s = start({ trustDomain: 'prod.example' })
    const listed = await s.list()
    expect(listed.map((p) => `${p.workload.namespace}/${p.workload.name}`).sort()).toEqual(['legacy/batch-worker-0', 'shop/api-7c9f8d5b6-x2k4q'])
    const apiPod = listed.find((p) => p.workload.name === 'api-7c9f8d5b6-x2k4q')!
    expect(apiPod).toEqual({
      workload: expect.objectContaining({ serviceAccount: 'api', addresses: ['10.244.1.17', 'fd00:10:244:1::11'], protocol: 'HBONE', trustDomain: 'prod.example', node: 'worker-1' }),
      netnsPath: netnsOf(pod('api')),
    })
    const podRequests = api.requests.filter((r) => r.url.startsWith('/api/v1/pods'))
    expect(podRequests.length).toBeGreaterThan(0)
    for (const request of podRequests) expect(new URL(request.url, api.url).searchParams.get('fieldSelector')).toBe('spec.nodeName=worker-1')
    for (const request of api.requests) expect(request.authorization).toBe(`Bearer ${TOKEN}`)
    // One /proc scan for everything listed, not one per pod.
    expect(resolver.calls).toHaveLength(1)
    const reasons = Object.fromEntries(s.state().skipped.map((p) => [p.name, p.reason]))
    expect(reasons).toEqual({
      'web-5d8b7c9f4-qp7rt': 'opted-out',
      'node-exporter-h4tn6': 'host-network',
      'api-6b4d9c8e7-v9j2k': 'terminating',
      'migrate-db-8tqzx': 'not-running',
      'report-28871040-lq9vd': 'not-running',
      'ratings-6f7d8c9b5-zk2lp': 'sidecar',
      'cleanup-5f9c8d7b6-r4x8n': 'not-ambient',
    })
    expect(s.state().synced).toBe(true)
  })

  it('follows a recorded pod lifecycle: enrolled once Running, updated on relabel, removed when terminating', async () => {
    const s = start()
    await s.list()
    const recorded = fixtureEvents('watch-pod-lifecycle.jsonl')
    const cart = recorded[0]!.object
    resolver.table.set(uidOf(cart), '/proc/7001/ns/net')
    const emit = (i: number): void => pods.emit(recorded[i]!.type as 'ADDED', recorded[i]!.object)
    // Bound to the node, then Pending while its init container runs, with IPs in the second event.
    expect(recorded.map((e) => [e.type, e.object.status?.phase, e.object.status?.podIPs?.length ?? 0])).toEqual([
      ['ADDED', 'Pending', 0],
      ['MODIFIED', 'Pending', 2],
      ['MODIFIED', 'Running', 2],
      ['MODIFIED', 'Running', 2],
      ['MODIFIED', 'Running', 2],
      ['DELETED', 'Running', 2],
    ])
    for (const i of [0, 1]) emit(i)
    expect(await barrier('1')).toEqual([])
    // Running: enrolled with both addresses and its netns.
    emit(2)
    expect(await events.next()).toEqual({
      type: 'upsert',
      pod: { workload: expect.objectContaining({ uid: uidOf(cart), addresses: ['10.244.1.44', 'fd00:10:244:1::2c'], serviceAccount: 'cart' }), netnsPath: '/proc/7001/ns/net' },
    })
    // Relabelled: the workload is upserted again with its new labels.
    emit(3)
    const relabelled = await events.next()
    expect(relabelled.type === 'upsert' && relabelled.pod.workload.labels).toMatchObject({ tier: 'backend' })
    // Terminating: removed at once; the final DELETED changes nothing more.
    emit(4)
    expect(describeEvent(await events.next())).toBe(`remove ${uidOf(cart)}`)
    emit(5)
    expect(await barrier('7')).toEqual([])
    expect(s.state().enrolled.map((p) => p.workload.name)).not.toContain('cart-0')
  })

  it('ignores updates that change nothing the mesh uses', async () => {
    const s = start()
    await s.list()
    const p = pod('api')
    p.metadata!.annotations = { 'kubectl.kubernetes.io/restartedAt': '2026-11-27T15:00:00Z' }
    p.status!.conditions![0]!.lastTransitionTime = '2026-11-27T15:00:01Z' as unknown as Date
    pods.emit('MODIFIED', p)
    expect(await barrier('2')).toEqual([])
  })

  it('re-evaluates the pods of a namespace when its label changes', async () => {
    const s = start()
    await s.list()
    const legacy = namespace('legacy')
    legacy.metadata!.labels!['istio.io/dataplane-mode'] = 'ambient'
    nsResource.emit('MODIFIED', legacy)
    expect(describeEvent(await events.next())).toBe('upsert legacy/cleanup-5f9c8d7b6-r4x8n')

    const shop = namespace('shop')
    delete shop.metadata!.labels!['istio.io/dataplane-mode']
    nsResource.emit('MODIFIED', shop)
    expect(describeEvent(await events.next())).toBe(`remove ${uidOf(pod('api'))}`)
    const enrolled = s.state().enrolled.map((e) => e.workload.name).sort()
    expect(enrolled).toEqual(['batch-worker-0', 'cleanup-5f9c8d7b6-r4x8n'])
  })

  it('leaves a pod enrolled while only an unrelated namespace label changes', async () => {
    const s = start()
    await s.list()
    const shop = namespace('shop')
    shop.metadata!.labels!.team = 'payments'
    nsResource.emit('MODIFIED', shop)
    expect(await barrier('3')).toEqual([])
    expect(s.state().enrolled).toHaveLength(3)
  })

  it('lets a pod label none opt out of an ambient namespace at runtime, and back in', async () => {
    const s = start()
    await s.list()
    const p = pod('api')
    p.metadata!.labels!['istio.io/dataplane-mode'] = 'none'
    pods.emit('MODIFIED', p)
    expect(describeEvent(await events.next())).toBe(`remove ${uidOf(p)}`)
    delete p.metadata!.labels!['istio.io/dataplane-mode']
    pods.emit('MODIFIED', p)
    expect(describeEvent(await events.next())).toBe('upsert shop/api-7c9f8d5b6-x2k4q')
    expect(s.state().skipped.find((x) => x.uid === uidOf(p))).toBeUndefined()
  })

  it('relists after 410 Gone and reports what changed while the watch was behind', async () => {
    const s = start()
    await s.list()
    const listsBefore = api.requests.filter((r) => r.url.startsWith('/api/v1/pods') && !r.url.includes('watch=true')).length
    // While the client is behind: the api pod is deleted, the migrate Job pod starts running.
    pods.setQuietly('DELETED', pod('api'))
    const migrate = pod('migrate')
    migrate.status!.phase = 'Running'
    pods.setQuietly('MODIFIED', migrate)
    const relist = pods.nextList()
    pods.expire()
    await relist
    const seen = [describeEvent(await events.next()), describeEvent(await events.next())].sort()
    expect(seen).toEqual([`remove ${uidOf(pod('api'))}`, 'upsert shop/migrate-db-8tqzx'].sort())
    const listsAfter = api.requests.filter((r) => r.url.startsWith('/api/v1/pods') && !r.url.includes('watch=true')).length
    expect(listsAfter).toBe(listsBefore + 1)
    expect(await barrier('4')).toEqual([])
  })

  it('treats a StatefulSet pod recreated under the same name during a gap as a new pod', async () => {
    const s = start()
    await s.list()
    const old = pod('batch')
    const recreated = pod('batch')
    recreated.metadata!.uid = 'a1b2c3d4-0000-4000-8000-00000000b0b0'
    recreated.status!.podIPs = [{ ip: '10.244.1.50' }]
    recreated.status!.podIP = '10.244.1.50'
    resolver.table.set(uidOf(recreated), '/proc/8123/ns/net')
    pods.setQuietly('MODIFIED', recreated)
    pods.expire()
    expect(describeEvent(await events.next())).toBe(`remove ${uidOf(old)}`)
    const next = await events.next()
    expect(next).toEqual({ type: 'upsert', pod: { workload: expect.objectContaining({ uid: uidOf(recreated), addresses: ['10.244.1.50'] }), netnsPath: '/proc/8123/ns/net' } })
  })

  it('resumes a watch the server ended from the last resource version, without relisting', async () => {
    const s = start()
    await s.list()
    const lists = (): number => api.requests.filter((r) => r.url.startsWith('/api/v1/pods') && !r.url.includes('watch=true')).length
    const before = lists()
    const rewatch = pods.nextWatch()
    pods.endWatches()
    const query = await rewatch
    expect(Number(query.get('resourceVersion'))).toBeGreaterThan(1000)
    expect(query.get('fieldSelector')).toBe('spec.nodeName=worker-1')
    expect(await barrier('5')).toEqual([])
    expect(lists()).toBe(before)
  })

  it('keeps retrying while the API server fails, and syncs once it answers', async () => {
    pods.failNext(503, 2)
    nsResource.failNext(500, 1)
    const s = start()
    const listed = await s.list()
    expect(listed).toHaveLength(2)
    expect(api.requests.filter((r) => r.status >= 500).map((r) => r.status).sort()).toEqual([500, 503, 503])
  })

  it('restarts a watch that failed after the sync', async () => {
    const s = start()
    await s.list()
    pods.failNext(503, 1)
    pods.endWatches()
    const recovered = pods.nextWatch()
    await recovered
    expect(await barrier('6')).toEqual([])
    expect(api.requests.some((r) => r.status === 503 && r.url.includes('watch=true'))).toBe(true)
  })

  it('keeps a pod pending while its netns is not found, and enrolls it once it is', async () => {
    const apiUid = uidOf(pod('api'))
    resolver.table.delete(apiUid)
    const s = start()
    const listed = await s.list()
    expect(listed.map((p) => p.workload.name)).toEqual(['batch-worker-0'])
    expect(s.state().pending.map((p) => p.uid)).toEqual([apiUid])
    expect(s.state().skipped.find((p) => p.uid === apiUid)?.reason).toBe('netns-not-found')
    resolver.table.set(apiUid, '/proc/4242/ns/net')
    const event = await events.next()
    expect(event).toEqual({ type: 'upsert', pod: { workload: expect.objectContaining({ uid: apiUid }), netnsPath: '/proc/4242/ns/net' } })
    expect(s.state().pending).toEqual([])
  })

  it('gives up on a netns after maxAttempts, logs why, and tries again when the pod changes', async () => {
    const apiUid = uidOf(pod('api'))
    resolver.table.delete(apiUid)
    const lines: { level: string; msg: string }[] = []
    const gaveUp = new EventQueue<string>()
    const log = (level: string) => (fields: unknown, msg?: string) => {
      const line = { level, msg: typeof fields === 'string' ? fields : (msg ?? '') }
      lines.push(line)
      if (level === 'error') gaveUp.push(line.msg)
    }
    const logger = { trace: log('trace'), debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error'), fatal: log('fatal'), child: () => logger }
    const s = start({ logger, netnsRetry: { initialDelayMs: 1, maxDelayMs: 2, maxAttempts: 3 } })
    await s.list()
    expect(await gaveUp.next()).toBe('pod shop/api-7c9f8d5b6-x2k4q: network namespace not found after 3 lookups; waiting for the pod to change')
    expect(lines.filter((l) => l.level === 'warn' && l.msg.includes('api-7c9f8d5b6-x2k4q'))).toEqual([
      { level: 'warn', msg: 'network namespace of pod shop/api-7c9f8d5b6-x2k4q not found yet; retrying' },
    ])
    expect(resolver.calls.filter((c) => c.includes(apiUid))).toHaveLength(3)
    expect(s.state().pending).toEqual([])
    expect(s.state().skipped.find((p) => p.uid === apiUid)?.message).toContain('not found after 3 lookups')

    resolver.table.set(apiUid, '/proc/4243/ns/net')
    const p = pod('api')
    p.metadata!.labels!.restarted = 'yes'
    pods.emit('MODIFIED', p)
    expect(await events.next()).toEqual({ type: 'upsert', pod: expect.objectContaining({ netnsPath: '/proc/4243/ns/net' }) })
  })

  it('looks up a pod that arrived while the first lookup ran', async () => {
    let releaseFirst!: () => void
    const firstHeld = new Promise<void>((resolve) => (releaseFirst = resolve))
    let firstStarted!: () => void
    const firstAsked = new Promise<void>((resolve) => (firstStarted = resolve))
    let calls = 0
    const slow: NetnsResolver = {
      async resolve(uids) {
        if (++calls === 1) {
          firstStarted()
          await firstHeld
        }
        return resolver.resolve(uids)
      },
    }
    const qualified = new EventQueue<string>()
    const noop = (): void => {}
    const logger = {
      trace: noop,
      debug: (fields: unknown, msg?: string) => qualified.push(typeof fields === 'string' ? fields : (msg ?? '')),
      info: noop,
      warn: noop,
      error: noop,
      fatal: noop,
      child: () => logger,
    }
    const s = start({ netnsResolver: slow, logger })
    await firstAsked
    const late = pod('cron')
    late.metadata!.labels!['istio.io/dataplane-mode'] = 'ambient'
    pods.emit('MODIFIED', late)
    const listing = s.list()
    // Handled while the first lookup is still held.
    while ((await qualified.next()) !== 'pod legacy/cleanup-5f9c8d7b6-r4x8n qualifies; looking for its network namespace');
    expect(s.state().synced).toBe(false)
    releaseFirst()
    expect((await listing).map((p) => p.workload.name).sort()).toEqual(['api-7c9f8d5b6-x2k4q', 'batch-worker-0'])
    expect(describeEvent(await events.next())).toBe('upsert legacy/cleanup-5f9c8d7b6-r4x8n')
  })

  it('survives a resolver that throws, and a listener that throws', async () => {
    let fail = true
    const flaky: NetnsResolver = {
      async resolve(uids) {
        if (fail) {
          fail = false
          throw new Error('EACCES: /proc')
        }
        return resolver.resolve(uids)
      },
    }
    const s = start({ netnsResolver: flaky })
    s.subscribe(() => {
      throw new Error('listener bug')
    })
    expect(await s.list()).toEqual([])
    const seen = [await events.next(), await events.next()].map(describeEvent).sort()
    expect(seen).toEqual(['upsert legacy/batch-worker-0', 'upsert shop/api-7c9f8d5b6-x2k4q'])
  })

  it('looks the netns up again when the pod gets new IPs (a new sandbox)', async () => {
    const s = start()
    await s.list()
    const p = pod('batch')
    p.status!.podIPs = [{ ip: '10.244.1.77' }]
    p.status!.podIP = '10.244.1.77'
    resolver.table.set(uidOf(p), '/proc/9999/ns/net')
    pods.emit('MODIFIED', p)
    expect(await events.next()).toEqual({ type: 'upsert', pod: { workload: expect.objectContaining({ addresses: ['10.244.1.77'] }), netnsPath: '/proc/9999/ns/net' } })
  })

  it('closes idempotently: watches hung up, waiting list() rejected, later calls refused', async () => {
    nsResource.failNext(500, 1000)
    const s = start()
    const waiting = s.list().catch((err: unknown) => err)
    await s.close()
    await s.close()
    expect(isAmbientError(await waiting, 'ERR_AMBIENT_CLOSED')).toBe(true)
    await pods.whenNoWatches()
    expect(pods.openWatches).toBe(0)
    await expect(s.list()).rejects.toMatchObject({ code: 'ERR_AMBIENT_CLOSED' })
    expect(() => s.subscribe(() => {})).toThrow(expect.objectContaining({ code: 'ERR_AMBIENT_CLOSED' }))
  })

  it('leaves no timer and no watch behind after close, even with a netns retry armed', async () => {
    resolver.table.clear()
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
    const baseline = timers()
    const s = start({ netnsRetry: { initialDelayMs: 60_000, maxDelayMs: 60_000 } })
    await s.list()
    expect(s.state().pending).toHaveLength(2)
    expect(timers()).toBeGreaterThan(baseline)
    await s.close()
    await pods.whenNoWatches()
    await nsResource.whenNoWatches()
    expect(timers()).toBeLessThanOrEqual(baseline)
  })

  it('closes a watch that was still connecting when close() came (ListWatch.stop misses it)', async () => {
    const release = nsResource.holdWatches()
    const watchRequested = nsResource.nextWatch()
    const s = start()
    await watchRequested
    const closing = s.close()
    release()
    await closing
    await nsResource.whenNoWatches()
    expect(nsResource.openWatches).toBe(0)
  })

  it('closes when its signal aborts, and list({ signal }) rejects when aborted', async () => {
    const controller = new AbortController()
    nsResource.failNext(500, 1000)
    const s = start({ signal: controller.signal })
    const listing = new AbortController()
    const waiting = s.list({ signal: listing.signal }).catch((err: unknown) => err)
    listing.abort(new Error('timeout'))
    expect(isAmbientError(await waiting, 'ERR_AMBIENT_ABORTED')).toBe(true)
    controller.abort()
    await expect(s.list()).rejects.toMatchObject({ code: 'ERR_AMBIENT_CLOSED' })
  })

  it('refuses options without a node name, naming it', () => {
    expect(() => createKubernetesPodSource({ kubeConfig: api.kubeConfig(), nodeName: '' })).toThrow(
      expect.objectContaining({ code: 'ERR_AMBIENT_INVALID_ARGUMENT', message: expect.stringContaining('nodeName') }),
    )
    expect(() => createKubernetesPodSource({ kubeConfig: api.kubeConfig(), nodeName: 'n', netnsRetry: { maxAttempts: 0 } })).toThrow(
      expect.objectContaining({ code: 'ERR_AMBIENT_INVALID_ARGUMENT', message: expect.stringContaining('netnsRetry.maxAttempts') }),
    )
  })
})
