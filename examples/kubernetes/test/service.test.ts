import type { V1Service } from '@kubernetes/client-node'
import { describe, expect, it } from 'vitest'
import { createWorkloadRegistry } from '@ambientkit/core'
import { podToWorkload, serviceFromKubernetes } from '../src/index'
import { endpointSlices, pod, services } from './helpers/fixtures'

const service = (name: string): V1Service => services().find((s) => s.metadata?.name === name)!

describe('serviceFromKubernetes on recorded objects', () => {
  it('maps a dual-stack service: both cluster IPs, numeric and named target ports, ready pods once', () => {
    const decision = serviceFromKubernetes(service('api'), endpointSlices())
    expect(decision).toEqual({
      include: true,
      service: {
        hostname: 'api.shop.svc.cluster.local',
        namespace: 'shop',
        vips: ['10.96.112.34', 'fd00:10:96::6c1a'],
        // 80 → 8080 numeric; 9090 → "grpc", which the slices resolve to 9091.
        ports: { 80: 8080, 9090: 9091 },
        // Listed in both the IPv4 and the IPv6 slice; the terminating pod is not ready.
        endpoints: [pod('api').metadata!.uid, pod('api2').metadata!.uid],
      },
    })
  })

  it('maps a service without endpoints, and uses the cluster domain given', () => {
    expect(serviceFromKubernetes(service('cart'), endpointSlices(), { clusterDomain: 'prod.internal' })).toEqual({
      include: true,
      service: { hostname: 'cart.shop.svc.prod.internal', namespace: 'shop', vips: ['10.96.40.7'], ports: { 8080: 8080 }, endpoints: [] },
    })
  })

  it('leaves out a named target port no slice resolves yet', () => {
    const decision = serviceFromKubernetes(service('api'), [])
    expect(decision.include && decision.service.ports).toEqual({ 80: 8080 })
  })

  it('skips headless and ExternalName services with the reason', () => {
    expect(serviceFromKubernetes(service('db'), endpointSlices())).toMatchObject({ include: false, reason: 'headless' })
    expect(serviceFromKubernetes(service('payments'), endpointSlices())).toEqual({
      include: false,
      reason: 'external-name',
      message: 'service shop/payments: is an ExternalName alias of "payments.example.com"',
    })
  })

  it('leaves out UDP ports and reports an invalid object instead of throwing', () => {
    const dns = service('cart')
    dns.spec!.ports = [{ name: 'dns', port: 53, protocol: 'UDP', targetPort: 5353 as never }, { name: 'tcp', port: 8080, protocol: 'TCP' }]
    const decision = serviceFromKubernetes(dns, [])
    expect(decision.include && decision.service.ports).toEqual({ 8080: 8080 })
    const broken = service('cart')
    broken.spec!.clusterIPs = ['10.96.40.999']
    expect(serviceFromKubernetes(broken, [])).toMatchObject({ include: false, reason: 'invalid', message: expect.stringContaining('10.96.40.999') })
  })

  it('feeds a registry that resolves the VIP to a ready pod, per address family', () => {
    const registry = createWorkloadRegistry()
    for (const name of ['api', 'api2', 'terminating']) registry.upsertWorkload(podToWorkload(pod(name)))
    const decision = serviceFromKubernetes(service('api'), endpointSlices())
    if (!decision.include) throw new Error(decision.message)
    registry.upsertService(decision.service)
    const v4 = registry.resolve('10.96.112.34', 80)
    expect(v4).toMatchObject({ kind: 'service', port: 8080 })
    expect(['10.244.1.17', '10.244.2.9']).toContain(v4?.address)
    const v6 = registry.resolve('fd00:10:96::6c1a', 9090)
    expect(v6).toMatchObject({ kind: 'service', port: 9091 })
    expect(['fd00:10:244:1::11', 'fd00:10:244:2::9']).toContain(v6?.address)
  })
})
