// The workload proxy's decisions without a socket: every branch of
// routeOutbound and authorizeInbound, as pure functions of the original
// destination, the workload, the registry and the policies.
import { describe, expect, it } from 'vitest'
import { createWorkloadRegistry, loadAuthorizationPolicy, type SocketAddress, type Workload } from '@ambientkit/core'
import { authorizeInbound, isOwnListener, routeOutbound, type RouteContext } from '../src/workload/route'
import { DEFAULT_WORKLOAD_PROXY_PORTS } from '../src/workload/ports'

const workload = (uid: string, addresses: string[], extra: Partial<Workload> = {}): Workload => ({
  uid,
  name: uid,
  namespace: 'shop',
  serviceAccount: uid,
  node: 'node-1',
  addresses,
  protocol: 'HBONE',
  labels: { app: uid },
  ...extra,
})

const to = (address: string, port: number): SocketAddress => ({ address, port, family: address.includes(':') ? 6 : 4 })

const web = workload('web', ['10.0.1.2', 'fd00::1:2'])
const api = workload('api', ['10.0.2.5', 'fd00::2:5'])
const legacy = workload('legacy', ['10.0.3.9'], { protocol: 'TCP' })

function context(extra: Partial<RouteContext> = {}): RouteContext {
  const registry = createWorkloadRegistry()
  for (const w of [web, api, legacy]) registry.upsertWorkload(w)
  registry.upsertService({ hostname: 'api.shop.svc.cluster.local', namespace: 'shop', vips: ['10.96.0.10'], ports: { 80: 8080 }, endpoints: ['api'] })
  registry.upsertService({ hostname: 'legacy.shop.svc.cluster.local', namespace: 'shop', vips: ['10.96.0.20'], ports: { 80: 9000 }, endpoints: ['legacy'] })
  return { workload: web, registry, ports: DEFAULT_WORKLOAD_PROXY_PORTS, outboundPolicy: 'passthrough', ...extra }
}

describe('routeOutbound', () => {
  it("tunnels to a mesh workload, expecting its SPIFFE ID, from the source's own address of the same family", () => {
    expect(routeOutbound(to('10.0.2.5', 8080), context())).toEqual({
      kind: 'tunnel',
      destination: to('10.0.2.5', 8080),
      target: expect.objectContaining({ uid: 'api' }),
      expectedIdentity: 'spiffe://cluster.local/ns/shop/sa/api',
      sourceAddress: '10.0.1.2',
    })
    expect(routeOutbound(to('fd00::2:5', 8080), context())).toMatchObject({ kind: 'tunnel', destination: to('fd00::2:5', 8080), sourceAddress: 'fd00::1:2' })
  })

  it('leaves the source address to the kernel when the workload has none of the destination family', () => {
    const route = routeOutbound(to('fd00::2:5', 8080), context({ workload: workload('v4only', ['10.0.1.7']) }))
    expect(route).toMatchObject({ kind: 'tunnel' })
    expect(route).not.toHaveProperty('sourceAddress')
  })

  it("resolves a service VIP to an endpoint and its target port, naming the service", () => {
    expect(routeOutbound(to('10.96.0.10', 80), context())).toMatchObject({
      kind: 'tunnel',
      destination: to('10.0.2.5', 8080),
      expectedIdentity: 'spiffe://cluster.local/ns/shop/sa/api',
      service: 'api.shop.svc.cluster.local',
      serviceNamespace: 'shop',
    })
  })

  it('passes a destination outside the mesh through in plain TCP, naming what the registry knows of it', () => {
    expect(routeOutbound(to('192.0.2.1', 443), context())).toEqual({ kind: 'passthrough', destination: to('192.0.2.1', 443) })
    expect(routeOutbound(to('10.0.3.9', 9000), context())).toMatchObject({ kind: 'passthrough', target: { uid: 'legacy' } })
    expect(routeOutbound(to('10.96.0.20', 80), context())).toMatchObject({
      kind: 'passthrough',
      destination: to('10.0.3.9', 9000),
      target: { uid: 'legacy' },
      service: 'legacy.shop.svc.cluster.local',
    })
  })

  it("refuses what is outside the mesh when passthrough is off, but still tunnels to the mesh", () => {
    const refusing = context({ outboundPolicy: 'refuse' })
    expect(routeOutbound(to('192.0.2.1', 443), refusing)).toMatchObject({ kind: 'refuse', reason: 'destination is not in the mesh and passthrough is off' })
    expect(routeOutbound(to('10.0.2.5', 8080), refusing)).toMatchObject({ kind: 'tunnel' })
  })

  it("refuses the proxy's own listeners on the pod's own addresses or loopback (a loop), not the same ports elsewhere", () => {
    for (const port of [15001, 15006, 15008]) {
      for (const address of ['127.0.0.1', '::1', '10.0.1.2', 'fd00::1:2']) {
        expect(routeOutbound(to(address, port), context()), `${address}:${port}`).toMatchObject({ kind: 'refuse', reason: expect.stringContaining('(loop)') })
      }
    }
    expect(routeOutbound(to('10.0.2.5', 15008), context())).toMatchObject({ kind: 'tunnel' })
    expect(routeOutbound(to('127.0.0.1', 8080), context())).toMatchObject({ kind: 'passthrough' })
  })

  it('follows the ports the proxy was given', () => {
    const ports = { outbound: 25001, inboundPlaintext: 25006, inbound: 25008 }
    expect(isOwnListener(to('10.0.1.2', 25008), { workload: web, ports })).toBe(true)
    expect(isOwnListener(to('10.0.1.2', 15008), { workload: web, ports })).toBe(false)
  })
})

describe('authorizeInbound', () => {
  const allowWeb = loadAuthorizationPolicy({ name: 'allow-web', namespace: 'shop', scope: 'workload', selector: { app: 'api' }, action: 'ALLOW', rules: [[[{ serviceAccounts: ['web'] }]]] })
  const denyAdmin = loadAuthorizationPolicy({ name: 'deny-admin', namespace: 'shop', scope: 'namespace', action: 'DENY', rules: [[[{ destinationPorts: [9090] }]]] })
  const inbound = (plaintext: 'permissive' | 'strict' = 'permissive', policies = [allowWeb, denyAdmin]) => ({ workload: api, ports: DEFAULT_WORKLOAD_PROXY_PORTS, policies, plaintext })
  const fromWeb = { address: '10.0.1.2', identity: 'spiffe://cluster.local/ns/shop/sa/web' }

  it('allows what a policy allows, keeping what authorization saw for re-evaluation', () => {
    expect(authorizeInbound(to('10.0.2.5', 8080), fromWeb, inbound())).toEqual({
      allowed: true,
      policy: 'shop/allow-web',
      connection: { sourceIp: '10.0.1.2', sourceIdentity: fromWeb.identity, destinationIp: '10.0.2.5', destinationPort: 8080, destination: api },
    })
  })

  it('denies by DENY first, then by an ALLOW that does not match, naming the deciding policy', () => {
    expect(authorizeInbound(to('10.0.2.5', 9090), fromWeb, inbound())).toMatchObject({ allowed: false, outcome: 'denied', policy: 'shop/deny-admin' })
    const other = { address: '10.0.9.9', identity: 'spiffe://cluster.local/ns/shop/sa/other' }
    const denied = authorizeInbound(to('10.0.2.5', 8080), other, inbound())
    expect(denied).toMatchObject({ allowed: false, outcome: 'denied' })
    expect(denied).not.toHaveProperty('policy')
  })

  it('authorizes plaintext with no identity when permissive, denies all of it when strict', () => {
    const plain = { address: '10.0.3.9' }
    expect(authorizeInbound(to('10.0.2.5', 8080), plain, inbound('permissive', []))).toMatchObject({ allowed: true, connection: { sourceIp: '10.0.3.9' } })
    expect(authorizeInbound(to('10.0.2.5', 8080), plain, inbound('permissive', []))).not.toHaveProperty('connection.sourceIdentity')
    expect(authorizeInbound(to('10.0.2.5', 8080), plain, inbound('strict', []))).toEqual({ allowed: false, outcome: 'denied', reason: 'plaintext refused (strict mode)' })
    // Strict mode is about plaintext only: HBONE is still authorized by policy.
    expect(authorizeInbound(to('10.0.2.5', 8080), fromWeb, inbound('strict'))).toMatchObject({ allowed: true })
  })

  it("refuses an address that is not the workload's, and the proxy's own listeners", () => {
    expect(authorizeInbound(to('10.0.2.6', 8080), fromWeb, inbound())).toMatchObject({ allowed: false, outcome: 'refused', reason: '10.0.2.6 is not an address of shop/api' })
    expect(authorizeInbound(to('10.0.2.5', 15008), fromWeb, inbound())).toMatchObject({ allowed: false, outcome: 'refused', reason: expect.stringContaining('(loop)') })
  })
})
