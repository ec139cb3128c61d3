import { createPolicyStore, createWorkloadRegistry, evaluateAuthorization, silentLogger, type AuthorizationConnection } from '@ambientkit/core'
import { describe, expect, it } from 'vitest'
import { ipFromBytes } from '../src/convert'
import { encodeMessage } from '../src/index'
import { messageType } from '../src/protos'
import { ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, DEFAULT_LIMITS, WdsState } from '../src/wds-state'

const ip = (text: string): Buffer => Buffer.from(text.split('.').map(Number))

function state() {
  const registry = createWorkloadRegistry()
  const policies = createPolicyStore()
  const wds = new WdsState(registry, policies, DEFAULT_LIMITS, silentLogger)
  const address = (name: string, message: Record<string, unknown>, version = '1') => ({ name, aliases: [], version, resource: { typeUrl: ADDRESS_TYPE_URL, value: encodeMessage('istio.workload.Address', message) } })
  // Encoded without encodeMessage's check, so that hostile values (unknown enums) reach the client.
  const authorizationType = messageType('istio.security.Authorization')
  const authorization = (name: string, message: Record<string, unknown>) => ({ name, aliases: [], version: '', resource: { typeUrl: AUTHORIZATION_TYPE_URL, value: Buffer.from(authorizationType.encode(authorizationType.fromObject(message)).finish()) } })
  return { registry, policies, wds, address, authorization }
}

const workload = (name: string, address: string, extra: Record<string, unknown> = {}) => ({
  workload: { uid: `c//Pod/ns/${name}`, name, namespace: 'ns', serviceAccount: name, addresses: [ip(address)], tunnelProtocol: 1, ...extra },
})

describe('addresses', () => {
  it('turns 4 and 16 bytes into canonical addresses', () => {
    expect(ipFromBytes(Buffer.from([10, 0, 0, 1]), 'a')).toBe('10.0.0.1')
    expect(ipFromBytes(Buffer.from('20010db8000000000000000000000001', 'hex'), 'a')).toBe('2001:db8::1')
    expect(() => ipFromBytes(Buffer.alloc(5), 'addresses[0]')).toThrow('addresses[0]: an address must be 4 or 16 bytes long, got 5')
  })
})

describe('workloads and services', () => {
  it('leaves host-network workloads out of the address index, and unhealthy endpoints out of services unless ALLOW_ALL', () => {
    const s = state()
    const svc = (name: string, healthPolicy = 0) => s.address(`ns/${name}.ns.svc`, { service: { name, namespace: 'ns', hostname: `${name}.ns.svc`, addresses: [{ address: ip(name === 'strict' ? '10.96.0.1' : '10.96.0.2') }], ports: [{ servicePort: 80, targetPort: 8080 }], loadBalancing: { healthPolicy } } })
    const member = { services: { 'ns/strict.ns.svc': { ports: [{ servicePort: 80, targetPort: 8080 }] }, 'ns/lenient.ns.svc': { ports: [{ servicePort: 80, targetPort: 8080 }] } } }
    expect(s.wds.apply(ADDRESS_TYPE_URL, [
      s.address('c//Pod/ns/host', workload('host', '192.168.0.10', { networkMode: 1 })),
      s.address('c//Pod/ns/sick', workload('sick', '10.0.0.2', { status: 1, ...member })),
      s.address('c//Pod/ns/well', workload('well', '10.0.0.3', member)),
      svc('strict'),
      svc('lenient', 1),
    ], [])).toEqual([])
    expect(s.registry.workloadByAddress('192.168.0.10')).toBeUndefined()
    expect(s.registry.workloadByUid('c//Pod/ns/host')).toBeDefined()
    expect(s.registry.serviceByVip('10.96.0.1')!.endpoints).toEqual(['c//Pod/ns/well'])
    expect([...s.registry.serviceByVip('10.96.0.2')!.endpoints].sort()).toEqual(['c//Pod/ns/sick', 'c//Pod/ns/well'])
    // A workload that recovers rejoins; the service is rewritten only when its endpoints change.
    const changes: string[] = []
    s.registry.subscribe((c) => changes.push(c.type))
    s.wds.apply(ADDRESS_TYPE_URL, [s.address('c//Pod/ns/sick', workload('sick', '10.0.0.2', member), '2')], [])
    expect([...s.registry.serviceByVip('10.96.0.1')!.endpoints].sort()).toEqual(['c//Pod/ns/sick', 'c//Pod/ns/well'])
    // Health is not part of core's workload: only the service changes.
    expect(changes).toEqual(['service-updated'])
  })

  it('routes host VIPs, shows CIDR VIPs (Istio 1.30) without routing them, and keeps what core does not model', () => {
    const s = state()
    expect(s.wds.apply(ADDRESS_TYPE_URL, [s.address('ns/wide.ns.svc', { service: {
      name: 'wide', namespace: 'ns', hostname: 'wide.ns.svc', ports: [{ servicePort: 80, targetPort: 8080 }],
      addresses: [{ network: 'net1', address: ip('10.96.0.9') }, { network: 'net1', address: ip('10.97.0.0'), length: 16 }],
      waypoint: { address: { network: 'net1', address: ip('10.0.0.99') }, hboneMtlsPort: 15008 },
      loadBalancing: { routingPreference: [2, 4], mode: 2 },
    } })], [])).toEqual([])
    expect(s.registry.serviceByVip('10.96.0.9')!.vips).toEqual(['10.96.0.9'])
    expect(s.registry.serviceByVip('10.97.0.0')).toBeUndefined()
    expect(s.wds.dump().services[0]).toMatchObject({
      vips: ['net1/10.96.0.9', 'net1/10.97.0.0/16'],
      waypoint: { destination: 'net1/10.0.0.99', hboneMtlsPort: 15008 },
      loadBalancer: { routingPreferences: ['ZONE', 'NODE'], mode: 'FAILOVER', healthPolicy: 'ONLY_HEALTHY' },
    })
  })

  it('keeps endpoints that arrive before their service', () => {
    const s = state()
    s.wds.apply(ADDRESS_TYPE_URL, [s.address('c//Pod/ns/a', workload('a', '10.0.0.1', { services: { 'ns/late.ns.svc': { ports: [{ servicePort: 80, targetPort: 9000 }] } } }))], [])
    s.wds.apply(ADDRESS_TYPE_URL, [s.address('ns/late.ns.svc', { service: { name: 'late', namespace: 'ns', hostname: 'late.ns.svc', addresses: [{ address: ip('10.96.0.3') }], ports: [{ servicePort: 80, targetPort: 0 }] } })], [])
    expect(s.registry.resolve('10.96.0.3', 80)).toMatchObject({ address: '10.0.0.1', port: 9000 })
  })

  it('refuses names that are not the resource\'s key, and keeps the previous version of a refused resource', () => {
    const s = state()
    s.wds.apply(ADDRESS_TYPE_URL, [s.address('c//Pod/ns/a', workload('a', '10.0.0.1'), 'v1')], [])
    const rejected = s.wds.apply(ADDRESS_TYPE_URL, [
      s.address('c//Pod/ns/a', workload('a', '10.0.0.9', { namespace: 'not a namespace' }), 'v2'),
      s.address('elsewhere', workload('b', '10.0.0.2')),
      s.address('ns/x', { service: { name: 'x', namespace: 'ns', hostname: 'y' } }),
    ], [])
    expect(rejected.map((r) => r.name)).toEqual(['c//Pod/ns/a', 'elsewhere', 'ns/x'])
    expect(rejected[1]!.reason).toBe('the resource name must be the workload uid "c//Pod/ns/b"')
    expect(s.registry.workloadByUid('c//Pod/ns/a')!.addresses).toEqual(['10.0.0.1'])
    expect(s.wds.versions(ADDRESS_TYPE_URL)).toEqual({ 'c//Pod/ns/a': 'v1' })
  })
})

describe('authorization semantics (ztunnel\'s)', () => {
  const conn = (port: number, identity?: string): AuthorizationConnection => ({
    sourceIp: '10.0.0.9', ...(identity ? { sourceIdentity: `spiffe://cluster.local/ns/x/sa/${identity}` } : {}), destinationIp: '10.0.0.1', destinationPort: port,
    destination: { namespace: 'ns', labels: {}, uid: 'w' },
  })
  const deny = (rules: unknown[]) => ({ name: 'p', namespace: 'ns', scope: 1, action: 1, rules })
  const denies = (rules: unknown[], connection = conn(80)): boolean => {
    const s = state()
    expect(s.wds.apply(AUTHORIZATION_TYPE_URL, [s.authorization('ns/p', deny(rules))], [])).toEqual([])
    return !evaluateAuthorization(s.policies.list(), connection).allowed
  }

  it('an empty clause matches; a clause whose matches are all empty never does; a rule with no clause matches', () => {
    expect(denies([{ clauses: [{ matches: [] }, { matches: [{ destinationPorts: [80] }] }] }])).toBe(true)
    expect(denies([{ clauses: [{ matches: [{}] }] }])).toBe(false)
    expect(denies([{ clauses: [{ matches: [{}, { destinationPorts: [80] }] }] }])).toBe(true)
    expect(denies([{ clauses: [] }])).toBe(true)
    expect(denies([])).toBe(false)
    // One rule that can never match does not hide the next one.
    expect(denies([{ clauses: [{ matches: [{}] }] }, { clauses: [{ matches: [{ destinationPorts: [80] }] }] }])).toBe(true)
  })

  it('masks host bits of CIDRs and refuses what cannot be expressed', () => {
    expect(denies([{ clauses: [{ matches: [{ sourceIps: [{ address: ip('10.0.0.77'), length: 24 }] }] }] }])).toBe(true)
    const s = state()
    const refused = s.wds.apply(AUTHORIZATION_TYPE_URL, [
      s.authorization('ns/a', { ...deny([{ clauses: [{ matches: [{ sourceIps: [{ address: ip('10.0.0.0'), length: 33 }] }] }] }]), name: 'a' }),
      s.authorization('ns/b', { ...deny([{ clauses: [{ matches: [{ principals: [{ prefix: 'a*b' }] }] }] }]), name: 'b' }),
      s.authorization('ns/c', { ...deny([{ clauses: [{ matches: [{ namespaces: [{ exact: '' }] }] }] }]), name: 'c' }),
      s.authorization('ns/d', { ...deny([{ clauses: [{ matches: [{ serviceAccounts: [{ namespace: 'ns', serviceAccount: '' }] }] }] }]), name: 'd' }),
      s.authorization('ns/e', { ...deny([]), name: 'e', scope: 7 }),
    ], [])
    expect(refused.map((r) => `${r.name}: ${r.reason}`)).toEqual([
      'ns/a: rules[0].clauses[0].matches[0].sourceIps[0]: prefix length 33 exceeds 32',
      'ns/b: rules[0].clauses[0].matches[0].principals[0]: "*" inside a string match is not supported',
      'ns/c: rules[0].clauses[0].matches[0].namespaces[0]: an empty string match is not supported',
      'ns/d: rules[0].clauses[0].matches[0].serviceAccounts[0]: expected a namespace and a service account name',
      'ns/e: scope: unknown enum value 7',
    ])
    expect(s.policies.list()).toEqual([])
  })
})
