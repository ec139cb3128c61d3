import { describe, expect, it } from 'vitest'
import { createWorkloadRegistry, type Service } from '@ambientkit/core'
import { kubernetesSearchDomains } from '@ambientkit/proxy'
import { findMeshService, type NameContext } from '../src/dns/names'
import { answersQuery, buildResponse, dnsPacket, Rcode, truncatedResponse, udpLimit } from '../src/dns/wire'

const service = (hostname: string, namespace: string, vips: string[]): Service => ({ hostname, namespace, vips, ports: { 80: 8080 }, endpoints: [] })

describe('findMeshService: which mesh service a queried name means, as ztunnel resolves it', () => {
  const registry = createWorkloadRegistry()
  registry.upsertService(service('api.shop.svc.cluster.local', 'shop', ['10.96.0.10', 'fd00:96::10']))
  registry.upsertService(service('api.web.svc.cluster.local', 'web', ['10.96.0.20']))
  registry.upsertService(service('api.example.com', 'shop', ['240.240.0.1']))
  registry.upsertService(service('*.wild.example', 'shop', ['240.240.0.2']))
  registry.upsertService(service('dup.example.com', 'web', ['240.240.0.3']))
  registry.upsertService(service('dup.example.com', 'shop', ['240.240.0.4']))
  registry.upsertService(service('db.shop.svc.cluster.local', 'shop', []))
  const shop: NameContext = { namespace: 'shop', clusterDomain: 'cluster.local', searchDomains: kubernetesSearchDomains('shop', 'cluster.local') }
  const find = (name: string, context = shop): { hostname: string; canonicalName?: string } | undefined => {
    const match = findMeshService(registry, name, context)
    return match && { hostname: match.service.hostname, ...(match.canonicalName === undefined ? {} : { canonicalName: match.canonicalName }) }
  }

  it('uses the search domains Kubernetes gives a pod', () => {
    expect(kubernetesSearchDomains('shop', 'Cluster.Local')).toEqual(['shop.svc.cluster.local', 'svc.cluster.local', 'cluster.local'])
  })

  it.each([
    ['api', 'api.shop.svc.cluster.local'],
    ['api.web', 'api.web.svc.cluster.local'],
    ['api.web.svc', 'api.web.svc.cluster.local'],
    ['api.web.svc.cluster.local.', 'api.web.svc.cluster.local'],
    ['API.Shop.SVC.cluster.local', 'api.shop.svc.cluster.local'],
    ['api.example.com', 'api.example.com'],
    ['x.wild.example', '*.wild.example'],
  ])('%s is %s', (name, hostname) => {
    expect(find(name)).toEqual({ hostname })
  })

  it("answers a name with a search domain appended by the client's resolver with a CNAME to the name without it, in the query's case", () => {
    expect(find('api.example.com.shop.svc.cluster.local.')).toEqual({ hostname: 'api.example.com', canonicalName: 'api.example.com' })
    expect(find('API.web.shop.svc.cluster.local')).toEqual({ hostname: 'api.web.svc.cluster.local', canonicalName: 'API.web' })
    expect(find('api.shop.svc.cluster.local')).toEqual({ hostname: 'api.shop.svc.cluster.local' })
    // A wildcard answers the queried name itself.
    expect(find('x.wild.example.svc.cluster.local')).toEqual({ hostname: '*.wild.example' })
  })

  it("prefers the client's namespace when several have the name, and reads short names in the client's namespace", () => {
    expect(find('dup.example.com')).toEqual({ hostname: 'dup.example.com' })
    expect(findMeshService(registry, 'dup.example.com', shop)?.service.namespace).toBe('shop')
    const web: NameContext = { namespace: 'web', clusterDomain: 'cluster.local', searchDomains: kubernetesSearchDomains('web', 'cluster.local') }
    expect(findMeshService(registry, 'dup.example.com', web)?.service.namespace).toBe('web')
    expect(find('api', web)).toEqual({ hostname: 'api.web.svc.cluster.local' })
  })

  it('leaves other names, headless services (no VIP) and the root to the upstream resolver', () => {
    for (const name of ['www.example.org', 'db', 'db.shop.svc.cluster.local', 'api.other', '.', '', 'cluster.local']) expect(find(name)).toBeUndefined()
  })
})

describe('DNS messages', () => {
  const query = (options: { edns?: number; id?: number } = {}): Buffer =>
    dnsPacket.encode({
      id: options.id ?? 0x1234,
      type: 'query',
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: 'A', name: 'Big.Example', class: 'IN' }],
      additionals:
        options.edns === undefined ? [] : [{ type: 'OPT', name: '.', udpPayloadSize: options.edns, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }],
    })

  it('takes a response only with the query ID and the question byte for byte', () => {
    const sent = query()
    const answer = dnsPacket.encode({ ...dnsPacket.decode(sent), type: 'response', answers: [{ type: 'A', name: 'Big.Example', data: '192.0.2.1' }] })
    expect(answersQuery(sent, answer)).toBe(true)
    expect(answersQuery(sent, dnsPacket.encode({ ...dnsPacket.decode(answer), id: 0x4321 }))).toBe(false)
    expect(answersQuery(sent, dnsPacket.encode({ ...dnsPacket.decode(answer), questions: [{ type: 'A', name: 'big.example', class: 'IN' }] }))).toBe(false)
    expect(answersQuery(sent, sent)).toBe(false)
    expect(answersQuery(sent, answer.subarray(0, 15))).toBe(false)
  })

  it('truncates a response that does not fit the client, which it sized with EDNS or not at all', () => {
    const many = Array.from({ length: 60 }, (_, i) => ({ type: 'A' as const, name: 'Big.Example', ttl: 30, data: `192.0.2.${i}` }))
    const plain = dnsPacket.decode(query())
    expect(udpLimit(plain)).toBe(512)
    const cut = dnsPacket.decode(buildResponse(plain, { rcode: Rcode.NoError, answers: many }, udpLimit(plain)))
    expect([cut.flag_tc, cut.answers?.length, cut.id]).toEqual([true, 0, 0x1234])
    const edns = dnsPacket.decode(query({ edns: 4096 }))
    const whole = dnsPacket.decode(buildResponse(edns, { rcode: Rcode.NoError, answers: many }, udpLimit(edns)))
    expect([whole.flag_tc, whole.answers?.length]).toEqual([false, 60])
    expect(whole.additionals?.map((a) => a.type)).toEqual(['OPT'])
    const empty = dnsPacket.decode(truncatedResponse(edns))
    expect([empty.flag_tc, empty.flag_rd, empty.questions?.[0]?.name, empty.additionals?.length]).toEqual([true, true, 'Big.Example', 1])
  })
})
