import { describe, expect, it } from 'vitest'
import { createWorkloadRegistry, normalizeWorkload, workloadIdentity, parseWorkloadIdentity, type RegistryChange, type Workload } from '@ambientkit/core'

const workload = (uid: string, addresses: string[], extra: Partial<Workload> = {}): Workload => ({
  uid,
  name: uid,
  namespace: 'shop',
  serviceAccount: 'api',
  node: 'node-1',
  addresses,
  protocol: 'HBONE',
  labels: { app: uid },
  ...extra,
})

describe('workload identity', () => {
  it('is spiffe://<trust domain>/ns/<namespace>/sa/<service account>', () => {
    expect(workloadIdentity(workload('a', []))).toBe('spiffe://cluster.local/ns/shop/sa/api')
    expect(workloadIdentity({ ...workload('a', []), trustDomain: 'example.org' })).toBe('spiffe://example.org/ns/shop/sa/api')
    expect(parseWorkloadIdentity('spiffe://example.org/ns/shop/sa/api')).toEqual({ trustDomain: 'example.org', namespace: 'shop', serviceAccount: 'api' })
    expect(parseWorkloadIdentity('spiffe://example.org/ns/shop/sa/api/extra')).toBeUndefined()
  })

  // Found by fuzzing: a workload whose identity could never be a SPIFFE ID was accepted.
  it('refuses a trust domain longer than 255 characters (SPIFFE-ID §2.3)', () => {
    expect(() => normalizeWorkload(workload('a', [], { trustDomain: 't'.repeat(256) }))).toThrow(/trustDomain: expected a trust domain .* at most 255 characters/)
    expect(normalizeWorkload(workload('a', [], { trustDomain: 't'.repeat(255) })).trustDomain).toHaveLength(255)
  })
})

describe('createWorkloadRegistry', () => {
  it('finds a workload by any textual form of its address', () => {
    const registry = createWorkloadRegistry()
    registry.upsertWorkload(workload('a', ['10.0.0.1', '2001:0db8:0:0::1']))
    for (const form of ['10.0.0.1', '::ffff:10.0.0.1', '::ffff:a00:1', '2001:db8::1', '2001:0db8:0:0::1', '2001:DB8:0000::1']) {
      expect(registry.workloadByAddress(form)?.uid, form).toBe('a')
    }
    expect(registry.workloadByAddress('10.0.0.2')).toBeUndefined()
    expect(registry.workloadByAddress('not an ip')).toBeUndefined()
    expect(registry.workloadByUid('a')?.addresses).toEqual(['10.0.0.1', '2001:db8::1'])
  })

  it('stores canonical, frozen copies and refuses invalid workloads naming the field', () => {
    const registry = createWorkloadRegistry()
    const stored = registry.upsertWorkload(workload('a', ['::ffff:10.0.0.1']))
    expect(stored.addresses).toEqual(['10.0.0.1'])
    expect(Object.isFrozen(stored)).toBe(true)
    expect(() => registry.upsertWorkload(workload('b', ['10.0.0.300']))).toThrow(/addresses\[0\]: expected an IPv4 or IPv6 address, got "10.0.0.300"/)
    expect(() => registry.upsertWorkload(workload('b', [], { namespace: 'a/b' }))).toThrow(/namespace: expected a non-empty name of \[a-zA-Z0-9._-\], got "a\/b"/)
    expect(() => registry.upsertWorkload(workload('b', [], { protocol: 'UDP' as 'TCP' }))).toThrow(/protocol: expected "HBONE" or "TCP"/)
    expect(() => registry.upsertWorkload(workload('', []))).toThrow(/uid: expected a non-empty string/)
    expect(registry.workloadByUid('b')).toBeUndefined()
  })

  it('emits added, updated and removed, and nothing for an identical upsert', () => {
    const registry = createWorkloadRegistry()
    const changes: RegistryChange[] = []
    const unsubscribe = registry.subscribe((c) => changes.push(c))
    registry.upsertWorkload(workload('a', ['10.0.0.1']))
    registry.upsertWorkload(workload('a', ['10.0.0.1']))
    registry.upsertWorkload(workload('a', ['10.0.0.2']))
    expect(registry.workloadByAddress('10.0.0.1')).toBeUndefined()
    expect(registry.removeWorkload('a')).toBe(true)
    expect(registry.removeWorkload('a')).toBe(false)
    unsubscribe()
    registry.upsertWorkload(workload('b', []))
    expect(changes.map((c) => c.type)).toEqual(['workload-added', 'workload-updated', 'workload-removed'])
    const updated = changes[1]
    expect(updated?.type === 'workload-updated' && updated.previous?.addresses).toEqual(['10.0.0.1'])
  })

  it('lets the newest claim on an address win, and keeps it when the old workload goes', () => {
    const registry = createWorkloadRegistry()
    registry.upsertWorkload(workload('old', ['10.0.0.1']))
    registry.upsertWorkload(workload('new', ['10.0.0.1']))
    expect(registry.workloadByAddress('10.0.0.1')?.uid).toBe('new')
    registry.removeWorkload('old')
    expect(registry.workloadByAddress('10.0.0.1')?.uid).toBe('new')
  })

  it('resolves a service VIP and port to its endpoints round-robin, with the target port', () => {
    const registry = createWorkloadRegistry()
    registry.upsertWorkload(workload('a', ['10.0.0.1', 'fd00::1']))
    registry.upsertWorkload(workload('b', ['10.0.0.2', 'fd00::2']))
    registry.upsertService({ hostname: 'api.shop.svc.cluster.local', namespace: 'shop', vips: ['10.96.0.10', 'fd00:96::10'], ports: { 80: 8080 }, endpoints: ['a', 'b', 'missing'] })
    const picks = [0, 1, 2, 3].map(() => registry.resolve('10.96.0.10', 80))
    expect(picks.map((p) => p?.kind === 'service' && `${p.workload.uid}@${p.address}:${p.port}`)).toEqual([
      'a@10.0.0.1:8080', 'b@10.0.0.2:8080', 'a@10.0.0.1:8080', 'b@10.0.0.2:8080',
    ])
    const v6 = registry.resolve('fd00:96:0::10', 80)
    expect(v6?.kind === 'service' && v6.address).toMatch(/^fd00::[12]$/)
    expect(registry.resolve('10.96.0.10', 81)).toBeUndefined()
    expect(registry.resolve('10.0.0.2', 9000)).toMatchObject({ kind: 'workload', address: '10.0.0.2', port: 9000 })
    expect(registry.serviceByVip('::ffff:10.96.0.10')?.hostname).toBe('api.shop.svc.cluster.local')
  })

  it('finds services by host name as DNS compares names, across namespaces, and forgets removed and renamed ones', () => {
    const registry = createWorkloadRegistry()
    const entry = { vips: ['240.240.0.1'], ports: { 443: 443 }, endpoints: [] }
    registry.upsertService({ hostname: 'api.example.com', namespace: 'shop', ...entry })
    registry.upsertService({ hostname: 'API.Example.com.', namespace: 'web', ...entry })
    registry.upsertService({ hostname: '*.example.com', namespace: 'web', ...entry })
    expect(registry.servicesByHostname('api.example.com.').map((s) => s.namespace)).toEqual(['shop', 'web'])
    expect(registry.servicesByHostname('*.EXAMPLE.com').map((s) => s.hostname)).toEqual(['*.example.com'])
    expect(registry.servicesByHostname('www.example.com')).toEqual([])
    registry.upsertService({ hostname: 'api.example.com', namespace: 'shop', ...entry, vips: ['240.240.0.2'] })
    expect(registry.servicesByHostname('api.example.com').map((s) => s.vips[0])).toEqual(['240.240.0.1', '240.240.0.2'])
    registry.removeService('web', 'API.Example.com.')
    expect(registry.servicesByHostname('api.example.com').map((s) => s.namespace)).toEqual(['shop'])
    registry.removeService('shop', 'api.example.com')
    expect(registry.servicesByHostname('api.example.com')).toEqual([])
  })

  it('refuses a service port outside 1-65535', () => {
    const registry = createWorkloadRegistry()
    expect(() => registry.upsertService({ hostname: 'x', namespace: 'shop', vips: [], ports: { 80: 70000 }, endpoints: [] })).toThrow(/ports.80: expected a target port 0-65535 \(0: per endpoint\), got 70000/)
    expect(() => registry.upsertService({ hostname: 'x', namespace: 'shop', vips: [], ports: { 80: 0 }, endpoints: [], endpointPorts: { a: { 80: 0 } } })).toThrow(/endpointPorts.a.80: expected a target port 1-65535, got 0/)
  })

  it('prefers an endpoint\'s own target port, and skips endpoints without one when the service has none', () => {
    const registry = createWorkloadRegistry()
    registry.upsertWorkload(workload('a', ['10.0.0.1']))
    registry.upsertWorkload(workload('b', ['10.0.0.2']))
    registry.upsertWorkload(workload('c', ['10.0.0.3']))
    registry.upsertService({ hostname: 'named', namespace: 'shop', vips: ['10.96.0.11'], ports: { 80: 0, 443: 8443 }, endpoints: ['a', 'b', 'c'], endpointPorts: { a: { 80: 8080 }, b: { 80: 9090, 443: 9443 } } })
    const http = [0, 1, 2, 3].map(() => registry.resolve('10.96.0.11', 80)).map((d) => `${d!.address}:${d!.port}`)
    expect(http).toEqual(['10.0.0.1:8080', '10.0.0.2:9090', '10.0.0.1:8080', '10.0.0.2:9090'])
    const https = [0, 1, 2].map(() => registry.resolve('10.96.0.11', 443)).map((d) => `${d!.address}:${d!.port}`)
    expect(new Set(https)).toEqual(new Set(['10.0.0.1:8443', '10.0.0.2:9443', '10.0.0.3:8443']))
  })

  it('accepts a workload on no node (an external endpoint)', () => {
    expect(createWorkloadRegistry().upsertWorkload(workload('vm', ['10.9.0.1'], { node: '' })).node).toBe('')
  })

  it('replaceAll reconciles with one change per difference and validates before changing anything', () => {
    const registry = createWorkloadRegistry({ workloads: [workload('a', ['10.0.0.1']), workload('b', ['10.0.0.2'])], services: [] })
    const changes: RegistryChange[] = []
    registry.subscribe((c) => changes.push(c))
    registry.replaceAll({
      workloads: [workload('a', ['10.0.0.1']), workload('c', ['10.0.0.3'])],
      services: [{ hostname: 's', namespace: 'shop', vips: ['10.96.0.1'], ports: { 80: 80 }, endpoints: ['a'] }],
    })
    expect(changes.map((c) => c.type).sort()).toEqual(['service-added', 'workload-added', 'workload-removed'])
    expect(registry.snapshot().workloads.map((w) => w.uid).sort()).toEqual(['a', 'c'])
    expect(() => registry.replaceAll({ workloads: [workload('z', ['bad'])], services: [] })).toThrow(/addresses\[0\]/)
    expect(registry.snapshot().workloads.map((w) => w.uid).sort()).toEqual(['a', 'c'])
  })

  it('indexes thousands of workloads by address', () => {
    const registry = createWorkloadRegistry()
    for (let i = 0; i < 5000; i++) registry.upsertWorkload(workload(`w${i}`, [`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`]))
    expect(registry.workloadByAddress('10.0.19.135')?.uid).toBe('w4999')
  })
})
