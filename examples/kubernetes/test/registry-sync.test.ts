import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createWorkloadRegistry, isAmbientError, type RegistryChange, type WorkloadRegistry } from '@ambientkit/core'
import { createKubernetesRegistrySync, type KubernetesRegistrySync } from '../src/index'
import { EventQueue, startFakeApiServer, type FakeApiServer, type FakeResource } from './helpers/fake-api-server'
import { endpointSlices, namespace, namespaces, pod, podNames, services } from './helpers/fixtures'

const uid = (name: string): string => pod(name).metadata!.uid!

function describeChange(change: RegistryChange): string {
  if ('workload' in change) return `${change.type} ${change.workload.name} ${change.workload.protocol}`
  return `${change.type} ${change.service.hostname}`
}

describe('createKubernetesRegistrySync against a Kubernetes API on 127.0.0.1', () => {
  let api: FakeApiServer
  let pods: FakeResource
  let nsResource: FakeResource
  let serviceResource: FakeResource
  let slices: FakeResource
  let registry: WorkloadRegistry
  let sync: KubernetesRegistrySync | undefined
  let changes: EventQueue<RegistryChange>

  beforeEach(async () => {
    api = await startFakeApiServer()
    pods = api.resource('/api/v1/pods')
    nsResource = api.resource('/api/v1/namespaces')
    serviceResource = api.resource('/api/v1/services')
    slices = api.resource('/apis/discovery.k8s.io/v1/endpointslices')
    for (const ns of namespaces()) nsResource.emit('ADDED', ns)
    for (const name of podNames) pods.emit('ADDED', pod(name))
    for (const service of services()) serviceResource.emit('ADDED', service)
    for (const slice of endpointSlices()) slices.emit('ADDED', slice)
    registry = createWorkloadRegistry()
    changes = new EventQueue()
    registry.subscribe(changes.push)
  })

  afterEach(async () => {
    await sync?.close()
    sync = undefined
    await api.close()
  })

  async function start(): Promise<KubernetesRegistrySync> {
    sync = createKubernetesRegistrySync({ kubeConfig: api.kubeConfig(), registry, trustDomain: 'prod.example', watchRestart: { initialDelayMs: 5, maxDelayMs: 20 } })
    await sync.ready()
    changes.drain()
    return sync
  }

  it('holds every pod with an address, HBONE when in the mesh, and every service with a cluster IP', async () => {
    await start()
    const protocols = Object.fromEntries(registry.snapshot().workloads.map((w) => [w.name, w.protocol]))
    expect(protocols).toEqual({
      'api-7c9f8d5b6-x2k4q': 'HBONE',
      'api-7c9f8d5b6-m8w3z': 'HBONE', // on worker-2: cluster-wide, judged on its own node
      'batch-worker-0': 'HBONE',
      'web-5d8b7c9f4-qp7rt': 'TCP', // opted out
      'api-6b4d9c8e7-v9j2k': 'TCP', // terminating: released by its node agent
      'migrate-db-8tqzx': 'TCP', // Pending, init container running
      'ratings-6f7d8c9b5-zk2lp': 'TCP', // has a sidecar
      'cleanup-5f9c8d7b6-r4x8n': 'TCP', // namespace not in the mesh
    })
    expect(registry.workloadByUid(uid('api'))?.trustDomain).toBe('prod.example')
    // Host network (node's address), Succeeded and unscheduled pods are not there.
    for (const name of ['node-exporter', 'report', 'unscheduled']) expect(registry.workloadByUid(uid(name))).toBeUndefined()
    expect(registry.snapshot().services.map((s) => s.hostname).sort()).toEqual(['api.shop.svc.cluster.local', 'cart.shop.svc.cluster.local'])
    expect(registry.resolve('fd00:10:96::6c1a', 9090)).toMatchObject({ kind: 'service', port: 9091 })
    for (const request of api.requests) expect(new URL(request.url, api.url).searchParams.get('fieldSelector')).toBeNull()
  })

  it('follows pods, namespace relabels, services and endpoint slices', async () => {
    await start()
    const cron = pod('cron')
    const legacy = namespace('legacy')
    legacy.metadata!.labels!['istio.io/dataplane-mode'] = 'ambient'
    nsResource.emit('MODIFIED', legacy)
    expect(describeChange(await changes.next())).toBe(`workload-updated ${cron.metadata!.name} HBONE`)

    const slice = endpointSlices().find((s) => s.metadata!.name === 'cart-b8w3f')!
    slice.endpoints = [{ addresses: ['10.244.1.26'], conditions: { ready: true }, targetRef: { kind: 'Pod', name: cron.metadata!.name, namespace: 'legacy', uid: cron.metadata!.uid } }]
    slices.emit('MODIFIED', slice)
    expect(describeChange(await changes.next())).toBe('service-updated cart.shop.svc.cluster.local')
    expect(registry.resolve('10.96.40.7', 8080)).toMatchObject({ kind: 'service', address: '10.244.1.26', port: 8080 })

    serviceResource.emit('DELETED', services().find((s) => s.metadata!.name === 'cart')!)
    expect(describeChange(await changes.next())).toBe('service-removed cart.shop.svc.cluster.local')

    const report = pod('report')
    pods.emit('DELETED', pod('api'))
    expect(describeChange(await changes.next())).toBe('workload-removed api-7c9f8d5b6-x2k4q HBONE')
    const migrate = pod('migrate')
    migrate.status!.phase = 'Failed'
    pods.emit('MODIFIED', migrate)
    expect(describeChange(await changes.next())).toBe('workload-removed migrate-db-8tqzx TCP')
    expect(registry.workloadByUid(report.metadata!.uid!)).toBeUndefined()
  })

  it('catches up after 410 Gone', async () => {
    await start()
    pods.setQuietly('DELETED', pod('web'))
    pods.expire()
    expect(describeChange(await changes.next())).toBe('workload-removed web-5d8b7c9f4-qp7rt TCP')
  })

  it('refuses a missing registry by name, and closes idempotently', async () => {
    expect(() => createKubernetesRegistrySync({ registry: undefined as never, kubeConfig: api.kubeConfig() })).toThrow(/registry: expected a WorkloadRegistry/)
    nsResource.failNext(500, 1000)
    const s = createKubernetesRegistrySync({ kubeConfig: api.kubeConfig(), registry, watchRestart: { initialDelayMs: 5, maxDelayMs: 10 } })
    const waiting = s.ready().catch((err: unknown) => err)
    await s.close()
    await s.close()
    expect(isAmbientError(await waiting, 'ERR_AMBIENT_CLOSED')).toBe(true)
    await pods.whenNoWatches()
    await serviceResource.whenNoWatches()
    await slices.whenNoWatches()
  })
})
