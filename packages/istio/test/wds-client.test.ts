import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { createPolicyStore, createWorkloadRegistry, evaluateAuthorization, type PolicyStore, type WorkloadRegistry } from '@ambientkit/core'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { createCertificateAuthority, createIdentityManager, createLocalCaSource } from '@ambientkit/identity'
import { createNodeProxy } from '@ambientkit/proxy'
import { createWdsClient, type WdsClient, type WdsConfigDump, type WdsEvent } from '../src/index'
import { ADDRESS, AUTHORIZATION, startFakeIstiod, type FakeStream } from './support/fake-istiod'
import { makeTestPki, type TestPki } from './support/tls'

const ip = (text: string): Buffer => Buffer.from(text.split('.').map(Number))

export const workload = (name: string, address: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  uid: `Kubernetes//Pod/shop/${name}`,
  name,
  namespace: 'shop',
  serviceAccount: name,
  addresses: [ip(address)],
  tunnelProtocol: 1,
  node: 'node-1',
  canonicalName: name,
  canonicalRevision: 'v1',
  ...extra,
})

let pki: TestPki
let dir: string
beforeAll(() => {
  pki = makeTestPki()
  dir = mkdtempSync(join(tmpdir(), 'ambientkit-wds-'))
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

interface Harness {
  istiod: Awaited<ReturnType<typeof startFakeIstiod>>
  client: WdsClient
  registry: WorkloadRegistry
  policies: PolicyStore
  events: WdsEvent[]
  /** Resolves with the next event of this type (already seen ones first). */
  event<T extends WdsEvent['type']>(type: T): Promise<Extract<WdsEvent, { type: T }>>
  /** Starts the client; a test that ends before it is ready closes it, which rejects start(): not what these tests check. */
  begin(): void
  /** The next stream and its two initial requests. */
  stream(): Promise<{ stream: FakeStream; address: Awaited<ReturnType<FakeStream['next']>>; authorization: Awaited<ReturnType<FakeStream['next']>> }>
}

const open: Harness[] = []
afterEach(async () => {
  for (const h of open.splice(0)) {
    await h.client.close()
    await h.istiod.close()
  }
})

async function harness(options: Partial<Parameters<typeof createWdsClient>[0]> = {}): Promise<Harness> {
  const istiod = await startFakeIstiod({ key: pki.serverKeyPem, cert: pki.serverCertPem })
  const tokenFile = join(dir, `token-${open.length}`)
  writeFileSync(tokenFile, 'first-token\n')
  const registry = createWorkloadRegistry()
  const policies = createPolicyStore()
  const client = createWdsClient({
    address: `https://127.0.0.1:${istiod.port}`,
    rootCert: pki.caPem,
    token: { file: tokenFile },
    clusterId: 'cluster-a',
    node: { ip: '10.0.0.9', podName: 'ztunnel-abc', podNamespace: 'istio-system', nodeName: 'node-1', metadata: { ISTIO_VERSION: '1.30.0', LABELS: { a: 'b' } } },
    registry,
    policies,
    ...options,
  })
  const events: WdsEvent[] = []
  const seen = new Map<string, number>()
  const waiters: Array<() => void> = []
  client.subscribe((e) => {
    events.push(e)
    for (const w of waiters.splice(0)) w()
  })
  const h: Harness = {
    istiod,
    client,
    registry,
    policies,
    events,
    async event(type) {
      for (;;) {
        const from = seen.get(type) ?? 0
        const index = events.findIndex((e, i) => i >= from && e.type === type)
        if (index >= 0) {
          seen.set(type, index + 1)
          return events[index] as never
        }
        await new Promise<void>((resolve) => waiters.push(resolve))
      }
    },
    begin() {
      client.start().catch(() => undefined)
    },
    async stream() {
      const stream = await istiod.streams()
      return { stream, address: await stream.next(), authorization: await stream.next() }
    },
  }
  open.push(h)
  ;(h as { tokenFile?: string }).tokenFile = tokenFile
  return h
}

describe('WDS client against a fake istiod (grpc-js over TLS)', () => {
  it('opens with one wildcard request per type, in ztunnel order, as ztunnel identifies itself', async () => {
    const h = await harness()
    h.begin()
    const { stream, address, authorization } = await h.stream()
    expect(address.typeUrl).toBe(ADDRESS)
    expect(authorization.typeUrl).toBe(AUTHORIZATION)
    for (const request of [address, authorization]) {
      expect(request.resourceNamesSubscribe).toEqual([])
      expect(request.initialResourceVersions).toEqual({})
      expect(request.node!.id).toBe('ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local')
      const fields = request.node!.metadata.fields
      expect(fields.NAME!.stringValue).toBe('ztunnel-abc')
      expect(fields.NAMESPACE!.stringValue).toBe('istio-system')
      expect(fields.INSTANCE_IPS!.stringValue).toBe('10.0.0.9')
      expect(fields.NODE_NAME!.stringValue).toBe('node-1')
      expect(fields.ISTIO_VERSION!.stringValue).toBe('1.30.0')
      expect(fields.LABELS).toMatchObject({ structValue: { fields: { a: { stringValue: 'b' } } } })
    }
    expect(stream.metadata.get('authorization')).toEqual(['Bearer first-token'])
    expect(stream.metadata.get('clusterid')).toEqual(['cluster-a'])
  })

  it('applies workloads, services and policies, ACKs by echoing the nonce, and is ready after both types', async () => {
    const h = await harness()
    const started = h.client.start()
    const { stream } = await h.stream()
    const n1 = stream.push(ADDRESS, [
      { name: 'Kubernetes//Pod/shop/api', version: 'v1', workload: workload('api', '10.1.0.5', { services: { 'shop/api.shop.svc.cluster.local': { ports: [{ servicePort: 80, targetPort: 8080 }] } } }) },
      { name: 'shop/api.shop.svc.cluster.local', version: 'v1', service: { name: 'api', namespace: 'shop', hostname: 'api.shop.svc.cluster.local', addresses: [{ network: '', address: ip('10.96.0.10') }], ports: [{ servicePort: 80, targetPort: 8080 }], waypoint: { hostname: { namespace: 'shop', hostname: 'waypoint.shop.svc.cluster.local' }, hboneMtlsPort: 15008 } } },
    ])
    const ack = await stream.next()
    expect(ack).toMatchObject({ typeUrl: ADDRESS, responseNonce: n1, errorDetail: null })
    expect(h.client.ready()).toBe(false)
    expect(h.registry.workloadByAddress('10.1.0.5')).toMatchObject({ uid: 'Kubernetes//Pod/shop/api', namespace: 'shop', serviceAccount: 'api', node: 'node-1', protocol: 'HBONE', labels: { 'service.istio.io/canonical-name': 'api' } })
    expect(h.registry.resolve('10.96.0.10', 80)).toMatchObject({ kind: 'service', address: '10.1.0.5', port: 8080 })
    const n2 = stream.push(AUTHORIZATION, [{ name: 'shop/deny-all', authorization: { name: 'deny-all', namespace: 'shop', scope: 1, action: 1, rules: [{ clauses: [] }] } }])
    expect(await stream.next()).toMatchObject({ typeUrl: AUTHORIZATION, responseNonce: n2, errorDetail: null })
    await started
    expect(h.client.ready()).toBe(true)
    expect(h.policies.list()).toMatchObject([{ name: 'deny-all', namespace: 'shop', scope: 'namespace', action: 'DENY' }])
    // What core does not model stays visible for /config_dump.
    const dump = h.client.configDump()
    expect(dump.services[0]).toMatchObject({ waypoint: { destination: 'shop/waypoint.shop.svc.cluster.local', hboneMtlsPort: 15008 }, endpoints: ['Kubernetes//Pod/shop/api'] })
    expect(dump.xds.types[ADDRESS]).toMatchObject({ resources: 2, acks: 1, nacks: 0, lastNonce: n1 })
  })

  it("plugs into a node proxy's readiness and /config_dump, waypoints included, until closed", async () => {
    const identities = createIdentityManager({ source: createLocalCaSource(await createCertificateAuthority({ trustDomain: 'cluster.local' })) })
    const nodeProxy = createNodeProxy({ nodeName: 'node-1', registry: createWorkloadRegistry(), identities, policies: createPolicyStore(), admin: { host: '127.0.0.1', port: 0 } })
    await nodeProxy.start()
    try {
      const h = await harness({ nodeProxy })
      const admin = async (path: string): Promise<{ status: number; body: string }> => {
        const response = await fetch(`http://127.0.0.1:${nodeProxy.adminAddress()!.port}${path}`)
        return { status: response.status, body: await response.text() }
      }
      h.begin()
      const { stream } = await h.stream()
      expect(await admin('/healthz/ready')).toMatchObject({ status: 503, body: expect.stringMatching(/wds \(no Address and Authorization from istiod at https:\/\/127\.0\.0\.1:\d+ ACKed yet\)/) })
      stream.push(ADDRESS, [
        { name: 'shop/api.shop.svc.cluster.local', version: 'v1', service: { name: 'api', namespace: 'shop', hostname: 'api.shop.svc.cluster.local', addresses: [{ network: '', address: ip('10.96.0.10') }], ports: [{ servicePort: 80, targetPort: 8080 }], waypoint: { hostname: { namespace: 'shop', hostname: 'waypoint.shop.svc.cluster.local' }, hboneMtlsPort: 15008 } } },
      ])
      await stream.next()
      expect(await admin('/healthz/ready')).toMatchObject({ status: 503, body: expect.stringMatching(/wds \(no Authorization from istiod/) })
      stream.push(AUTHORIZATION, [])
      await stream.next()
      expect(await admin('/healthz/ready')).toEqual({ status: 200, body: 'ready\n' })
      const dump = JSON.parse((await admin('/config_dump')).body) as { components: Record<string, { ready: boolean; state: WdsConfigDump }> }
      expect(dump.components.wds!.ready).toBe(true)
      expect(dump.components.wds!.state.services[0]).toMatchObject({ waypoint: { destination: 'shop/waypoint.shop.svc.cluster.local', hboneMtlsPort: 15008 } })
      await h.client.close()
      expect(nodeProxy.configDump().components).not.toHaveProperty('wds')
    } finally {
      await nodeProxy.close()
    }
  })

  it('NACKs the rejected resources by name while the valid ones still apply', async () => {
    const h = await harness()
    h.begin()
    const { stream } = await h.stream()
    stream.push(ADDRESS, [
      { name: 'Kubernetes//Pod/shop/good', version: '1', workload: workload('good', '10.1.0.6') },
      { name: 'Kubernetes//Pod/shop/short', version: '1', workload: { ...workload('short', '10.1.0.7'), addresses: [Buffer.from([10, 1, 0])] } },
      { name: 'Kubernetes//Pod/shop/legacy', version: '1', workload: workload('legacy', '10.1.0.8', { tunnelProtocol: 2 }) },
      { name: 'garbage', version: '1', raw: Buffer.from([0xff, 0xff, 0xff]) },
      { name: 'hollow', version: '1', empty: true },
    ])
    const nack = await stream.next()
    const message = nack.errorDetail!.message
    expect(message).toContain('Kubernetes//Pod/shop/short: addresses[0]: an address must be 4 or 16 bytes long, got 3')
    expect(message).toContain('Kubernetes//Pod/shop/legacy: unsupported tunnel protocol LEGACY_ISTIO_MTLS')
    expect(message).toContain('garbage: cannot decode')
    expect(message).toContain('hollow: the resource is missing')
    expect(message).not.toContain('good')
    expect(h.registry.workloadByAddress('10.1.0.6')?.name).toBe('good')
    expect(h.registry.workloadByAddress('10.1.0.7')).toBeUndefined()
    expect(h.client.ready()).toBe(false)
    const event = await h.event('response')
    expect(event.rejected.map((r) => r.name).sort()).toEqual(['Kubernetes//Pod/shop/legacy', 'Kubernetes//Pod/shop/short', 'garbage', 'hollow'])
  })

  it('removes workloads and services named in removed_resources', async () => {
    const h = await harness()
    h.begin()
    const { stream } = await h.stream()
    stream.push(ADDRESS, [
      { name: 'Kubernetes//Pod/shop/api', version: '1', workload: workload('api', '10.1.0.5', { services: { 'shop/api.shop.svc.cluster.local': { ports: [{ servicePort: 80, targetPort: 8080 }] } } }) },
      { name: 'Kubernetes//Pod/shop/web', version: '1', workload: workload('web', '10.1.0.6', { services: { 'shop/api.shop.svc.cluster.local': { ports: [{ servicePort: 80, targetPort: 8081 }] } } }) },
      { name: 'shop/api.shop.svc.cluster.local', version: '1', service: { name: 'api', namespace: 'shop', hostname: 'api.shop.svc.cluster.local', addresses: [{ network: '', address: ip('10.96.0.10') }], ports: [{ servicePort: 80, targetPort: 0 }] } },
    ])
    await stream.next()
    // Named target ports: each endpoint its own.
    const ports = new Set([h.registry.resolve('10.96.0.10', 80)!.port, h.registry.resolve('10.96.0.10', 80)!.port])
    expect(ports).toEqual(new Set([8080, 8081]))
    stream.push(ADDRESS, [], ['Kubernetes//Pod/shop/web'])
    expect((await stream.next()).errorDetail).toBeNull()
    expect(h.registry.workloadByAddress('10.1.0.6')).toBeUndefined()
    expect(h.registry.serviceByVip('10.96.0.10')!.endpoints).toEqual(['Kubernetes//Pod/shop/api'])
    stream.push(ADDRESS, [], ['shop/api.shop.svc.cluster.local', 'never-sent'])
    expect((await stream.next()).errorDetail).toBeNull()
    expect(h.registry.serviceByVip('10.96.0.10')).toBeUndefined()
    expect(h.client.configDump().xds.types[ADDRESS]!.resources).toBe(1)
  })

  it('reconnects at once on "transport is closing", resending the versions held, and keeps the state meanwhile', async () => {
    const h = await harness()
    h.begin()
    const first = await h.stream()
    first.stream.push(ADDRESS, [
      { name: 'Kubernetes//Pod/shop/api', version: 'v7', workload: workload('api', '10.1.0.5') },
      { name: 'Kubernetes//Pod/shop/bad', version: 'v1', workload: { ...workload('bad', '10.1.0.9'), addresses: [Buffer.alloc(5)] } },
    ])
    await first.stream.next()
    first.stream.push(AUTHORIZATION, [{ name: 'shop/allow', version: '', authorization: { name: 'allow', namespace: 'shop', scope: 1, action: 0, rules: [] } }])
    await first.stream.next()
    const changes: unknown[] = []
    h.registry.subscribe((c) => changes.push(c))
    first.stream.end(grpc.status.UNAVAILABLE, 'transport is closing')
    const gone = await h.event('disconnected')
    expect(gone).toMatchObject({ reason: 'Reconnect', retryInMs: 10 })
    const second = await h.stream()
    // Rejected resources are not recorded: istiod re-sends them.
    expect(second.address.initialResourceVersions).toEqual({ 'Kubernetes//Pod/shop/api': 'v7' })
    expect(second.authorization.initialResourceVersions).toEqual({ 'shop/allow': '' })
    expect(second.address.node!.id).toContain('ztunnel~')
    expect(h.registry.workloadByAddress('10.1.0.5')?.name).toBe('api')
    expect(h.policies.list()).toHaveLength(1)
    expect(changes).toEqual([])
  })

  it('backs off, doubling, on other errors; reads the token again on each connection', async () => {
    const h = await harness({ backoff: { initialMs: 10, maxMs: 40 } })
    h.begin()
    const tokenFile = (h as { tokenFile?: string }).tokenFile!
    const retries: number[] = []
    for (let i = 0; i < 4; i++) {
      const { stream } = await h.stream()
      if (i === 1) expect(stream.metadata.get('authorization')).toEqual(['Bearer second-token'])
      writeFileSync(tokenFile, 'second-token')
      // Established (a response went through), then an error other than istiod's rebalancing.
      stream.push(AUTHORIZATION, [])
      await stream.next()
      stream.end(grpc.status.INTERNAL, 'something broke')
      const event = await h.event('disconnected')
      expect(event.reason).toBe('Error')
      expect(event.error?.code).toBe('ERR_AMBIENT_ISTIO_XDS_STREAM')
      retries.push(event.retryInMs)
    }
    expect(retries).toEqual([20, 40, 40, 40])
    // Refused before any response (istiod's authorization): ztunnel counts it a connection error.
    const refused = await h.stream()
    refused.stream.end(grpc.status.PERMISSION_DENIED, 'authorization failed: no identity')
    expect(await h.event('disconnected')).toMatchObject({ reason: 'ConnectionError', retryInMs: 40 })
    const { stream } = await h.stream()
    stream.push(AUTHORIZATION, [])
    await stream.next()
    stream.end(grpc.status.UNAVAILABLE, 'transport is closing')
    expect((await h.event('disconnected')).retryInMs).toBe(10)
    expect(h.client.configDump().xds.terminations).toMatchObject({ Error: 4, ConnectionError: 1, Reconnect: 1 })
  })

  it('refuses an istiod whose certificate another CA signed (a connection error, backing off)', async () => {
    const h = await harness({ rootCert: pki.otherCaPem })
    h.begin()
    const event = await h.event('disconnected')
    expect(event.reason).toBe('ConnectionError')
    expect(event.retryInMs).toBe(20)
    expect(h.client.ready()).toBe(false)
  })

  it('start() rejects when the client is closed before it is ready', async () => {
    const h = await harness()
    const started = h.client.start()
    await h.stream()
    await h.client.close()
    await expect(started).rejects.toMatchObject({ code: 'ERR_AMBIENT_CLOSED' })
    await expect(h.client.start()).rejects.toMatchObject({ code: 'ERR_AMBIENT_CLOSED' })
  })

  it('refuses a response with more resources than the limit, whole', async () => {
    const h = await harness({ limits: { maxResourcesPerResponse: 2 } })
    h.begin()
    const { stream } = await h.stream()
    stream.push(ADDRESS, [1, 2, 3].map((i) => ({ name: `Kubernetes//Pod/shop/w${i}`, workload: workload(`w${i}`, `10.1.0.${i}`) })))
    expect((await stream.next()).errorDetail!.message).toBe('response: 3 resources and removals exceed the limit of 2; nothing applied')
    expect(h.registry.snapshot().workloads).toEqual([])
  })
})

describe('authorization policies from WDS', () => {
  it('maps rules, clauses, matches and the not_* fields, ALLOW and DENY, and workload-selected policies', async () => {
    const h = await harness()
    h.begin()
    const { stream } = await h.stream()
    stream.push(ADDRESS, [
      { name: 'Kubernetes//Pod/shop/api', workload: workload('api', '10.1.0.5', { authorizationPolicies: ['shop/api-only'] }) },
      { name: 'Kubernetes//Pod/shop/db', workload: workload('db', '10.1.0.6') },
    ])
    await stream.next()
    stream.push(AUTHORIZATION, [
      {
        name: 'shop/api-only',
        authorization: {
          name: 'api-only', namespace: 'shop', scope: 2, action: 0,
          rules: [{ clauses: [
            { matches: [{ principals: [{ prefix: 'cluster.local/ns/shop/' }], notPrincipals: [{ exact: 'cluster.local/ns/shop/sa/intruder' }] }] },
            { matches: [{ destinationPorts: [8080] }, { sourceIps: [{ address: ip('192.168.1.77'), length: 24 }] }] },
          ] }],
        },
      },
      { name: 'shop/no-plaintext', authorization: { name: 'no-plaintext', namespace: 'shop', scope: 1, action: 1, rules: [{ clauses: [{ matches: [{ notPrincipals: [{ presence: {} }] }] }] }] } },
      { name: 'istio-system/mesh-deny-ns', authorization: { name: 'mesh-deny-ns', namespace: 'istio-system', scope: 0, action: 1, rules: [{ clauses: [{ matches: [{ namespaces: [{ suffix: '-evil' }], serviceAccounts: [{ namespace: 'x-evil', serviceAccount: 'bot' }] }] }] }] } },
      { name: 'shop/dry', authorization: { name: 'dry', namespace: 'shop', scope: 1, action: 1, dryRun: true, rules: [{ clauses: [] }] } },
      { name: 'shop/bad-port', authorization: { name: 'bad-port', namespace: 'shop', scope: 1, action: 1, rules: [{ clauses: [{ matches: [{ destinationPorts: [70000] }] }] }] } },
      { name: 'shop/unset-match', authorization: { name: 'unset-match', namespace: 'shop', scope: 1, action: 0, rules: [{ clauses: [{ matches: [{ principals: [{}] }] }] }] } },
    ])
    const reply = await stream.next()
    expect(reply.errorDetail!.message).toMatch(/^shop\/bad-port: rules\[0\]\.clauses\[0\]\.matches\[0\]\.destinationPorts\[0\]: expected a port 1-65535, got 70000; shop\/unset-match: .*a string match without exact, prefix, suffix or presence$/)
    expect(h.policies.list().map((p) => p.name).sort()).toEqual(['api-only', 'mesh-deny-ns', 'no-plaintext'])
    const api = h.registry.workloadByAddress('10.1.0.5')!
    const db = h.registry.workloadByAddress('10.1.0.6')!
    const decide = (destination: typeof api, identity: string | undefined, port = 8080, sourceIp = '10.1.0.9'): boolean =>
      evaluateAuthorization(h.policies.list(), { sourceIp, ...(identity ? { sourceIdentity: `spiffe://${identity}` } : {}), destinationIp: destination.addresses[0]!, destinationPort: port, destination }).allowed
    expect(decide(api, 'cluster.local/ns/shop/sa/web')).toBe(true)
    expect(decide(api, 'cluster.local/ns/shop/sa/web', 9090)).toBe(false) // second clause: neither port nor source range
    expect(decide(api, 'cluster.local/ns/shop/sa/web', 9090, '192.168.1.3')).toBe(true)
    expect(decide(api, 'cluster.local/ns/shop/sa/intruder')).toBe(false) // not_principals
    expect(decide(api, 'cluster.local/ns/other/sa/web')).toBe(false)
    expect(decide(api, undefined)).toBe(false) // DENY without a principal
    expect(decide(db, 'cluster.local/ns/other/sa/web', 9090)).toBe(true) // api-only does not select db
    expect(decide(db, 'cluster.local/ns/x-evil/sa/bot')).toBe(false) // global DENY
    expect(decide(db, 'cluster.local/ns/y-evil/sa/bot')).toBe(true) // its service account does not match
    // The workload leaves the selection: the policy no longer applies to it.
    stream.push(ADDRESS, [{ name: 'Kubernetes//Pod/shop/api', workload: workload('api', '10.1.0.5') }])
    await stream.next()
    expect(decide(h.registry.workloadByAddress('10.1.0.5')!, 'cluster.local/ns/other/sa/web')).toBe(true)
    // Removed policies leave the store.
    stream.push(AUTHORIZATION, [], ['shop/no-plaintext', 'shop/dry'])
    await stream.next()
    expect(h.policies.list().map((p) => p.name).sort()).toEqual(['api-only', 'mesh-deny-ns'])
    expect(h.client.configDump().policies.map((p) => p.name).sort()).toEqual(['api-only', 'mesh-deny-ns'])
  })
})
