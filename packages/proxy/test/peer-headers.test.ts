// The HBONE request headers ztunnel sends and reads: what our outbound side
// puts on a CONNECT, and what our inbound side takes from a peer's.
import { describe, expect, it } from 'vitest'
import { createWorkloadRegistry, type Workload } from '@ambientkit/core'
import { forwardedHost } from '../src/forwarded-host'
import { buildRequest } from '../src/transport/request'
import { forwardedService, newTraceparent, outboundHeaders, parseBaggage, withBaggage } from '../src/workload/peer-headers'

const web: Workload = { uid: 'web-1', name: 'web-5f7c-x2', namespace: 'shop', serviceAccount: 'web', node: 'n', addresses: ['10.0.1.2'], protocol: 'HBONE', labels: { app: 'web', version: 'v2' } }
const api: Workload = { ...web, uid: 'api-1', name: 'api-0', addresses: ['10.0.2.5'], labels: {} }

describe('outbound CONNECT headers', () => {
  it("carry ztunnel's baggage, forwarded (with the service's host) and a fresh traceparent", () => {
    const headers = outboundHeaders(web, { address: '10.0.1.2', port: 40_000 }, 'api.shop.svc.cluster.local')
    expect(headers.baggage).toBe('k8s.namespace.name=shop,k8s.pod.name=web-5f7c-x2,service.name=web,service.version=v2')
    expect(headers.forwarded).toBe('for="10.0.1.2:40000";host=api.shop.svc.cluster.local')
    expect(headers.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/)
    expect(outboundHeaders(web, { address: 'fd00::2', port: 1 }, undefined).forwarded).toBe('for="[fd00::2]:1"')
    expect(newTraceparent()).not.toBe(newTraceparent())
  })

  it('draw trace ids from a pool that is refilled, never reused: 1,000 in a row are well-formed and all different', () => {
    // 170 ids fit in one 4 KiB draw: this crosses five refills.
    const ids = Array.from({ length: 1000 }, () => newTraceparent())
    for (const id of ids) expect(id).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/)
    expect(new Set(ids.map((id) => id.slice(3, 35))).size).toBe(1000)
    expect(new Set(ids.map((id) => id.slice(36, 52))).size).toBe(1000)
  })
})

describe('inbound CONNECT headers', () => {
  it('read baggage as ztunnel does: every workload kind, empty values and unknown members ignored', () => {
    expect(parseBaggage('k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web,service.version=v2')).toEqual({
      cluster: 'east',
      namespace: 'shop',
      workload: 'web',
      service: 'web',
      revision: 'v2',
    })
    expect(parseBaggage('k8s.cronjob.name=nightly;prop=1, other=x, service.name=, broken, service.version=%E0%A4%A')).toEqual({ workload: 'nightly' })
    expect(parseBaggage(undefined)).toEqual({})
  })

  it('name an unknown source from its baggage, and a known one from the registry', () => {
    const baggage = parseBaggage('k8s.namespace.name=shop,k8s.pod.name=web-0,service.name=web,k8s.cluster.name=east')
    expect(withBaggage({ address: '10.9.9.9', identity: 'spiffe://x/ns/shop/sa/web' }, baggage)).toEqual({
      address: '10.9.9.9',
      identity: 'spiffe://x/ns/shop/sa/web',
      workload: 'web-0',
      namespace: 'shop',
      canonicalService: 'web',
      cluster: 'east',
    })
    const known = { address: '10.0.1.2', workload: 'web-5f7c-x2', namespace: 'shop' }
    expect(withBaggage(known, baggage)).toBe(known)
  })

  it("take forwarded's host from any peer, but report only a service the workload is an endpoint of", () => {
    expect(forwardedHost('for="10.0.1.2:40000";host=api.shop.svc.cluster.local')).toBe('api.shop.svc.cluster.local')
    expect(forwardedHost('host="a.example.com";for=1.2.3.4')).toBe('a.example.com')
    expect(forwardedHost('for=1.2.3.4, host=b.example.com')).toBeUndefined()
    expect(forwardedHost('for="x;host=c"')).toBeUndefined()
    expect(forwardedHost('for=1.2.3.4 ; host = "x.example"')).toBe('x.example')
    expect(forwardedHost('proto=https;host="a\\"b.example"')).toBe('a"b.example')
    expect(forwardedHost('host=;for=1.2.3.4')).toBeUndefined()
    expect(forwardedHost('no pairs at all')).toBeUndefined()
    const registry = createWorkloadRegistry()
    registry.upsertWorkload(api)
    registry.upsertService({ hostname: 'api.shop.svc.cluster.local', namespace: 'shop', vips: ['10.96.0.10'], ports: { 80: 8080 }, endpoints: ['api-1'] })
    registry.upsertService({ hostname: 'other.shop.svc.cluster.local', namespace: 'shop', vips: ['10.96.0.11'], ports: { 80: 8080 }, endpoints: [] })
    expect(forwardedService(registry, api, 'api.shop.svc.cluster.local')?.namespace).toBe('shop')
    expect(forwardedService(registry, api, 'other.shop.svc.cluster.local')).toBeUndefined()
    expect(forwardedService(registry, api, undefined)).toBeUndefined()
    const peer = { identity: 'spiffe://x/ns/shop/sa/web', address: { address: '10.0.1.2', port: 1, family: 4 as const } }
    const request = buildRequest({ forwarded: 'for="10.0.1.2:1";host=api.shop.svc.cluster.local' }, peer, { address: '10.0.2.5', port: 8080, family: 4 }, false)
    expect(request.forwardedHost).toBe('api.shop.svc.cluster.local')
    expect(request.forwardedFor).toBeUndefined()
  })
})
