// The node proxy's admin surface without a pod: readiness and /config_dump
// follow the components registered with it (the agent's first reconcile, an
// xDS stream), as well as its workloads.
import { afterEach, describe, expect, it } from 'vitest'
import { createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
import { createCertificateAuthority, createIdentityManager, createLocalCaSource } from '@ambientkit/identity'
import { createNodeProxy, type NodeProxy } from '@ambientkit/proxy'

let proxy: NodeProxy | undefined
afterEach(async () => {
  await proxy?.close()
  proxy = undefined
})

async function started(): Promise<NodeProxy> {
  const identities = createIdentityManager({ source: createLocalCaSource(await createCertificateAuthority({ trustDomain: 'cluster.local' })) })
  proxy = createNodeProxy({ nodeName: 'node-1', registry: createWorkloadRegistry(), identities, policies: createPolicyStore(), admin: { host: '127.0.0.1', port: 0 } })
  await proxy.start()
  return proxy
}

async function get(node: NodeProxy, path: string): Promise<{ status: number; body: string }> {
  const { address, port } = node.adminAddress()!
  const res = await fetch(`http://${address}:${port}${path}`)
  return { status: res.status, body: await res.text() }
}

describe('node proxy components', () => {
  it('hold readiness until each is ready, and show in /config_dump', async () => {
    const node = await started()
    expect(await get(node, '/healthz/ready')).toEqual({ status: 200, body: 'ready\n' })
    let synced = false
    const unregister = node.register({
      name: 'wds',
      notReady: () => (synced ? undefined : 'no response from istiod yet'),
      configDump: () => ({ address: 'https://istiod.istio-system.svc:15012', synced }),
    })
    expect(node.ready()).toBe(false)
    expect(await get(node, '/healthz/ready')).toEqual({ status: 503, body: 'not ready: wds (no response from istiod yet)\n' })
    expect(node.configDump().components).toEqual({ wds: { ready: false, notReady: 'no response from istiod yet', state: { address: 'https://istiod.istio-system.svc:15012', synced: false } } })
    synced = true
    expect(await get(node, '/healthz/ready')).toEqual({ status: 200, body: 'ready\n' })
    expect(JSON.parse((await get(node, '/config_dump')).body).components).toEqual({ wds: { ready: true, state: { address: 'https://istiod.istio-system.svc:15012', synced: true } } })
    unregister()
    unregister()
    expect(node.configDump().components).toEqual({})
  })

  it('refuses a second component of the same name, and one without a name', async () => {
    const node = await started()
    node.register({ name: 'agent' })
    expect(() => node.register({ name: 'agent' })).toThrow(/component.name: expected a name not registered yet, got "agent"/)
    expect(() => node.register({ name: '' })).toThrow(/component: expected an object with a non-empty name/)
    expect(node.configDump().components).toEqual({ agent: { ready: true } })
  })
})
