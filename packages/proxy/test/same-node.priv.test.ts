import type { Server, Socket } from 'node:net'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { workloadIdentity, type AuthorizationPolicy } from '@ambientkit/core'
import { applyCapture } from '@ambientkit/redirect'
import type { WorkloadProxy } from '@ambientkit/proxy'
import { createTestNetwork, type TestNetwork } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { closedWith, established, exchange, startEchoApp, startSinkApp, tryExchange, waitFor } from './support/apps'
import { createTestControlPlane, meshPod, meshWorkload, type MeshPod, type TestControlPlane, metricLines } from './support/mesh'

// One node with three captured mesh pods and the same-node fast path on:
//   a (web/frontend), b (shop/api), c (shop/admin)
describePrivileged('same-node fast path: pods of one node proxy, spliced in-process', ['ip', 'nft'], () => {
  let network: TestNetwork
  let cp: TestControlPlane
  let a: MeshPod
  let b: MeshPod
  let c: MeshPod
  let proxyA: WorkloadProxy
  let proxyB: WorkloadProxy
  let node: ReturnType<TestControlPlane['nodeProxy']>
  const apps: Server[] = []

  const connectFrom = (from: MeshPod, host: string, port: number): Promise<Socket> => from.netns.connect({ host, port, allowHalfOpen: true })

  beforeAll(async () => {
    network = createTestNetwork('ak-same')
    cp = await createTestControlPlane()
    const n1 = await network.addNode()
    const [pa, pb, pc] = [await network.addPod(n1), await network.addPod(n1), await network.addPod(n1)]
    a = meshPod(pa, meshWorkload(pa, { name: 'frontend', namespace: 'web', serviceAccount: 'frontend' }))
    b = meshPod(pb, meshWorkload(pb, { name: 'api', namespace: 'shop', serviceAccount: 'api' }))
    c = meshPod(pc, meshWorkload(pc, { name: 'admin', namespace: 'shop', serviceAccount: 'admin' }))
    for (const p of [a, b, c]) {
      cp.registry.upsertWorkload(p.workload)
      apps.push(await startEchoApp(p.netns, 8080), await startSinkApp(p.netns, 8081))
      await applyCapture(p.netns, {}, { backend: 'nftables' })
    }
    node = cp.nodeProxy('node-1', undefined, { sameNodeFastPath: true })
    proxyA = await node.proxy.addWorkload(a.workload, a.netns)
    proxyB = await node.proxy.addWorkload(b.workload, b.netns)
    await node.proxy.addWorkload(c.workload, c.netns)
  })

  afterAll(async () => {
    for (const app of apps) app.close()
    await cp?.close()
    await network?.cleanup()
  })

  const policy = (name: string, action: 'ALLOW' | 'DENY', match: Record<string, unknown>, extra: Record<string, unknown> = {}): AuthorizationPolicy =>
    ({ name, namespace: 'shop', scope: 'namespace', action, rules: [[[match]]], ...extra }) as AuthorizationPolicy

  it('connects pods of the node without HBONE, logged by both ends with both identities', async () => {
    expect(await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'hello b')).toEqual({ response: 'hello b', ended: true })
    expect(await exchange(await connectFrom(a, b.pod.ipv6, 8080), 'hello b over IPv6')).toEqual({ response: 'hello b over IPv6', ended: true })
    expect(proxyA.hboneSessions()).toEqual({ outbound: 0, inbound: 0 })
    expect(proxyB.hboneSessions()).toEqual({ outbound: 0, inbound: 0 })
    const outbound = cp.accessLog.findLast((e) => e.listener === 'outbound' && e.destination.address === b.pod.ipv4)
    expect(outbound).toMatchObject({ protocol: 'local', outcome: 'closed', destination: { identity: workloadIdentity(b.workload), port: 8080 }, bytesSent: 7, bytesReceived: 7 })
    const inbound = cp.accessLog.findLast((e) => e.listener === 'inbound-hbone' && e.destination.address === b.pod.ipv4)
    expect(inbound).toMatchObject({ protocol: 'local', outcome: 'closed', source: { identity: workloadIdentity(a.workload), workload: 'frontend', address: a.pod.ipv4 } })
    const metrics = (await metricLines(node.proxy, 'istio_tcp_connections_opened_total')).join('\n')
    expect(metrics).toMatch(/reporter="destination".*source_principal="spiffe:\/\/cluster\.local\/ns\/web\/sa\/frontend"/)
  })

  it('moves a large stream intact, half-close included', async () => {
    const payload = Buffer.alloc(8 * 1024 * 1024, 'ambientkit ')
    const result = await exchange(await connectFrom(a, b.pod.ipv4, 8081), payload)
    const [, bytes] = result.response.trim().split(' ')
    expect(Number(bytes)).toBe(payload.length)
    expect(result.ended).toBe(true)
  })

  it('authorizes with the source identity, on the destination side, naming the policy', async () => {
    cp.policies.replaceAll([
      policy('allow-web-to-api', 'ALLOW', { principals: ['cluster.local/ns/web/sa/frontend'] }, { scope: 'workload', selector: { app: 'api' } }),
      policy('allow-shop-to-admin', 'ALLOW', { namespaces: ['shop'] }, { scope: 'workload', selector: { app: 'admin' } }),
    ])
    try {
      expect(await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'ok')).toEqual({ response: 'ok', ended: true })
      expect(cp.accessLog.findLast((e) => e.listener === 'inbound-hbone' && e.destination.address === b.pod.ipv4)).toMatchObject({ protocol: 'local', outcome: 'closed', policy: 'shop/allow-web-to-api' })
      // Denied at once: the reset can arrive before the app's connect() has returned.
      expect((await tryExchange(connectFrom(a, c.pod.ipv4, 8080), 'nope')).response).toBe('')
      expect(cp.accessLog.findLast((e) => e.listener === 'inbound-hbone' && e.destination.address === c.pod.ipv4)).toMatchObject({
        protocol: 'local',
        outcome: 'denied',
        source: { identity: workloadIdentity(a.workload) },
      })
      expect(cp.accessLog.findLast((e) => e.listener === 'outbound' && e.destination.address === c.pod.ipv4)).toMatchObject({ protocol: 'local', outcome: 'denied' })
      expect(await exchange(await connectFrom(b, c.pod.ipv4, 8080), 'same namespace')).toEqual({ response: 'same namespace', ended: true })
      const denials = (await metricLines(node.proxy, 'ambientkit_authorization_denials_total')).join('\n')
      expect(denials).toMatch(/destination_workload="admin"/)
    } finally {
      cp.policies.replaceAll([])
    }
  })

  it('closes an established connection that a policy change now denies', async () => {
    const socket = await connectFrom(a, b.pod.ipv4, 8080)
    await established(socket, 'before')
    const closed = closedWith(socket)
    cp.policies.upsert(policy('deny-frontend', 'DENY', { principals: ['cluster.local/ns/web/sa/frontend'] }))
    try {
      await closed
      // Both ends log once their splice has settled, which can be just after the app saw the reset.
      await waitFor(() => cp.accessLog.some((e) => e.listener === 'inbound-hbone' && e.destination.address === b.pod.ipv4 && e.outcome === 'terminated'))
      expect(cp.accessLog.findLast((e) => e.listener === 'inbound-hbone' && e.destination.address === b.pod.ipv4)).toMatchObject({ protocol: 'local', outcome: 'terminated' })
    } finally {
      cp.policies.replaceAll([])
    }
  })

  it('a draining destination takes no new connection, lets open ones finish, then closes', async () => {
    const open = await connectFrom(a, c.pod.ipv4, 8080)
    await established(open)
    const proxyC = await node.proxy.addWorkload(c.workload, c.netns)
    const drained = proxyC.drain({ deadline: 30_000 })
    try {
      expect((await tryExchange(connectFrom(a, c.pod.ipv4, 8080), 'late')).response).toBe('')
      // Not served in-process any more, and its listeners are closed: the source's proxy reports the failure.
      await waitFor(() => cp.accessLog.some((e) => e.listener === 'outbound' && e.destination.address === c.pod.ipv4 && e.outcome === 'failed'))
      // The open connection still works, and its end lets the drain finish.
      expect(await exchange(open, 'still here')).toEqual({ response: 'still here', ended: true })
      await drained
    } finally {
      await node.proxy.removeWorkload(c.workload.uid)
      await node.proxy.addWorkload(c.workload, c.netns)
    }
  })

  it('removing the destination workload closes its connections, and later ones fail closed', async () => {
    const socket = await connectFrom(a, c.pod.ipv4, 8080)
    await established(socket)
    const closed = closedWith(socket)
    await node.proxy.removeWorkload(c.workload.uid)
    try {
      expect((await closed)?.code).toBe('ECONNRESET')
      // c is still captured but has no proxy: the connection goes to HBONE and fails, never straight to the app.
      const after = await tryExchange(connectFrom(a, c.pod.ipv4, 8080), 'nobody')
      expect(after.response).toBe('')
      expect(cp.accessLog.findLast((e) => e.listener === 'outbound' && e.destination.address === c.pod.ipv4)).toMatchObject({ protocol: 'HBONE', outcome: 'failed' })
    } finally {
      await node.proxy.addWorkload(c.workload, c.netns)
    }
  })
})
