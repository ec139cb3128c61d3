import { createHash, randomFillSync } from 'node:crypto'
import { readdirSync } from 'node:fs'
import type { Server, Socket } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { workloadIdentity, type AuthorizationPolicy } from '@ambientkit/core'
import { nativeHboneThreads } from '@ambientkit/proxy'
import { applyCapture, removeCapture } from '@ambientkit/redirect'
import { createTestNetwork, type TestNetwork, type TestNode } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { closedWith, established, exchange, exchangeStream, tryExchange, startEchoApp, startResetApp, startSinkApp, waitFor } from './support/apps'
import { startPacketCapture } from './support/capture'
import { createTestControlPlane, meshPod, meshWorkload, type MeshPod, type TestControlPlane, metricLines } from './support/mesh'
import { dataPaths } from './support/native'

// Two nodes, each a router namespace with its own pod subnet; pods are
// namespaces with capture rules applied and a node proxy serving them.
//   node 1: a (web/frontend, mesh), d (web/legacy, outside the mesh)
//   node 2: b (shop/api, mesh), c (shop/admin, mesh)
const VIP = '10.96.0.10'

describePrivileged('mesh: two nodes, capture, HBONE between node proxies', ['ip', 'nft', 'tcpdump'], () => {
  describe.each(dataPaths('mesh'))('%s data path', (dataPath) => {
    let network: TestNetwork
    let cp: TestControlPlane
    let n1: TestNode
    let n2: TestNode
    let a: MeshPod
    let b: MeshPod
    let c: MeshPod
    let d: MeshPod
    const apps: Server[] = []
    let node1: ReturnType<TestControlPlane['nodeProxy']>
    let node2: ReturnType<TestControlPlane['nodeProxy']>

    const connectFrom = (from: MeshPod, host: string, port: number): Promise<Socket> =>
      // An ordinary app socket: no mark, so the pod's capture rules apply.
      from.netns.connect({ host, port, allowHalfOpen: true })

    beforeAll(async () => {
      network = createTestNetwork('ak-mesh')
      cp = await createTestControlPlane()
      n1 = await network.addNode()
      n2 = await network.addNode()
      const [pa, pd, pb, pc] = [await network.addPod(n1), await network.addPod(n1), await network.addPod(n2), await network.addPod(n2)]
      a = meshPod(pa, meshWorkload(pa, { name: 'frontend', namespace: 'web', serviceAccount: 'frontend' }))
      d = meshPod(pd, meshWorkload(pd, { name: 'legacy', namespace: 'web', serviceAccount: 'legacy', protocol: 'TCP' }))
      b = meshPod(pb, meshWorkload(pb, { name: 'api', namespace: 'shop', serviceAccount: 'api' }))
      c = meshPod(pc, meshWorkload(pc, { name: 'admin', namespace: 'shop', serviceAccount: 'admin' }))
      for (const p of [a, b, c, d]) cp.registry.upsertWorkload(p.workload)
      cp.registry.upsertService({ hostname: 'api.shop.svc.cluster.local', namespace: 'shop', vips: [VIP], ports: { 80: 8080 }, endpoints: [b.workload.uid] })
      for (const p of [a, b, c, d]) {
        apps.push(await startEchoApp(p.netns, 8080), await startSinkApp(p.netns, 8081), await startResetApp(p.netns, 8082), await startEchoApp(p.netns, 9090))
      }
      node1 = cp.nodeProxy('node-1', { dataPath })
      node2 = cp.nodeProxy('node-2', { dataPath })
      for (const [node, pod] of [[node1, a], [node2, b], [node2, c]] as const) {
        await applyCapture(pod.netns, {}, { backend: 'nftables' })
        await node.proxy.addWorkload(pod.workload, pod.netns)
      }
    })

    afterAll(async () => {
      for (const app of apps) app.close()
      await cp?.close()
      await network?.cleanup()
    })

    it('carries pod → pod traffic across nodes through HBONE, with both identities in the access log', async () => {
      const mark = cp.accessLog.length
      const result = await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'hello b')
      expect(result).toEqual({ response: 'hello b', ended: true })
      const v6 = await exchange(await connectFrom(a, b.pod.ipv6, 8080), 'hello b over IPv6')
      expect(v6).toEqual({ response: 'hello b over IPv6', ended: true })
      expect(await cp.logged((e) => e.listener === 'outbound' && e.destination.address === b.pod.ipv4, mark)).toMatchObject({ protocol: 'HBONE', outcome: 'closed', destination: { identity: workloadIdentity(b.workload), port: 8080 }, bytesSent: 7, bytesReceived: 7 })
      expect(await cp.logged((e) => e.listener === 'inbound-hbone' && e.destination.address === b.pod.ipv4, mark)).toMatchObject({ source: { identity: workloadIdentity(a.workload), workload: 'frontend' }, outcome: 'closed' })
    })

    it('says which data path and how many data-path threads carry its tunnels in /config_dump', () => {
      for (const node of [node1, node2]) {
        const dump = node.proxy.configDump()
        expect(dump.workloads.map((w) => w.transport)).toEqual(dump.workloads.map(() => dataPath))
        expect(dump.hboneThreads).toBe(dataPath === 'native' ? nativeHboneThreads() : undefined)
      }
    })

    it('never lets the payload cross between the nodes in plaintext', async () => {
      const marker = `plaintext-marker-${process.pid}-${Date.now()}`
      const sentinel = `plaintext-sentinel-${process.pid}-${Date.now()}`
      // Node 1 reaches node 2 over its veth `to2`.
      const capture = await startPacketCapture(n1.name, 'to2')
      let pcap: Buffer
      try {
        for (let i = 0; i < 5; i++) expect((await exchange(await connectFrom(a, b.pod.ipv4, 8080), marker)).response).toBe(marker)
        // d is outside the mesh: its payload crosses in plaintext, which proves
        // the capture would have shown the marker had it crossed in the clear.
        expect((await exchange(await d.netns.connect({ host: c.pod.ipv4, port: 9090 }), sentinel)).response).toBe(sentinel)
        await capture.waitFor(Buffer.from(sentinel))
      } finally {
        pcap = await capture.stop()
      }
      const hbonePort = Buffer.alloc(2)
      hbonePort.writeUInt16BE(15008)
      expect(pcap.includes(hbonePort)).toBe(true)
      expect(pcap.includes(Buffer.from(marker))).toBe(false)
    })

    const policy = (name: string, action: 'ALLOW' | 'DENY', match: Record<string, unknown>, extra: Record<string, unknown> = {}): AuthorizationPolicy =>
      ({ name, namespace: 'shop', scope: 'namespace', action, rules: [[[match]]], ...extra }) as AuthorizationPolicy

    it('allows and denies by principal, namespace and port, on HBONE and on plaintext inbound, naming the policy', async () => {
      const mark = cp.accessLog.length
      cp.policies.replaceAll([
        policy('allow-web-to-api', 'ALLOW', { principals: ['cluster.local/ns/web/sa/frontend'] }, { scope: 'workload', selector: { app: 'api' } }),
        policy('allow-shop-to-admin', 'ALLOW', { namespaces: ['shop'] }, { scope: 'workload', selector: { app: 'admin' } }),
        policy('deny-metrics-port', 'DENY', { destinationPorts: [9090] }),
      ])
      try {
        // principal: a (web/frontend) → b allowed; a → c (only namespace shop) denied
        expect(await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'ok')).toEqual({ response: 'ok', ended: true })
        expect(await cp.logged((e) => e.listener === 'inbound-hbone' && e.destination.address === b.pod.ipv4, mark)).toMatchObject({ outcome: 'closed', policy: 'shop/allow-web-to-api' })
        const toAdmin = await exchange(await connectFrom(a, c.pod.ipv4, 8080), 'nope')
        expect(toAdmin.response).toBe('')
        // namespace: b (shop/api) → c allowed (same node, still HBONE)
        expect(await exchange(await connectFrom(b, c.pod.ipv4, 8080), 'same node')).toEqual({ response: 'same node', ended: true })
        // port: a → b:9090 denied by the DENY policy, whatever the ALLOW says
        expect((await exchange(await connectFrom(a, b.pod.ipv4, 9090), 'nope')).response).toBe('')
        // plaintext inbound: d (outside the mesh) has no identity, so no ALLOW matches it
        expect((await tryExchange(d.netns.connect({ host: b.pod.ipv4, port: 8080 }), 'nope')).response).toBe('')
        expect(await cp.logged((e) => e.listener === 'inbound-hbone' && e.destination.address === c.pod.ipv4 && e.outcome === 'denied', mark)).toMatchObject({
          source: { identity: workloadIdentity(a.workload) },
          reason: expect.stringMatching(/no-allow-policy-matched|denied/),
        })
        expect(await cp.logged((e) => e.listener === 'inbound-hbone' && e.destination.port === 9090, mark)).toMatchObject({ outcome: 'denied', policy: 'shop/deny-metrics-port' })
        expect(await cp.logged((e) => e.listener === 'outbound' && e.destination.port === 9090, mark)).toMatchObject({ outcome: 'denied' })
        expect(await cp.logged((e) => e.listener === 'inbound-plaintext' && e.destination.address === b.pod.ipv4, mark)).toMatchObject({ outcome: 'denied', source: { address: d.pod.ipv4 } })
        const metrics = await metricLines(node2.proxy, 'ambientkit_authorization_denials_total')
        expect(metrics.join('\n')).toMatch(/policy="shop\/deny-metrics-port"/)
      } finally {
        cp.policies.replaceAll([])
      }
    })

    it('refuses plaintext inbound in strict mode, still serving HBONE', async () => {
      expect(await tryExchange(d.netns.connect({ host: c.pod.ipv4, port: 8080 }), 'plain')).toEqual({ response: 'plain', ended: true })
      await node2.proxy.removeWorkload(c.workload.uid)
      const strict = cp.nodeProxy('node-2-strict', { dataPath, inboundPlaintext: 'strict' })
      try {
        await strict.proxy.addWorkload(c.workload, c.netns)
        const mark = cp.accessLog.length
        expect((await tryExchange(d.netns.connect({ host: c.pod.ipv4, port: 8080 }), 'plain')).response).toBe('')
        expect(await cp.logged((e) => e.listener === 'inbound-plaintext' && e.destination.address === c.pod.ipv4, mark)).toMatchObject({ outcome: 'denied', reason: expect.stringMatching(/strict/) })
        expect(await exchange(await connectFrom(a, c.pod.ipv4, 8080), 'mtls')).toEqual({ response: 'mtls', ended: true })
      } finally {
        await strict.proxy.removeWorkload(c.workload.uid)
        await node2.proxy.addWorkload(c.workload, c.netns)
      }
    })

    it('passes traffic to a workload outside the mesh through as plain TCP', async () => {
      const mark = cp.accessLog.length
      expect(await exchange(await connectFrom(a, d.pod.ipv4, 8080), 'to legacy')).toEqual({ response: 'to legacy', ended: true })
      expect(await cp.logged((e) => e.listener === 'outbound' && e.destination.address === d.pod.ipv4, mark)).toMatchObject({ protocol: 'TCP', outcome: 'closed', bytesSent: 9 })
    })

    it('routes a service VIP to an endpoint through HBONE', async () => {
      const mark = cp.accessLog.length
      expect(await exchange(await connectFrom(a, VIP, 80), 'via vip')).toEqual({ response: 'via vip', ended: true })
      expect(await cp.logged((e) => e.listener === 'outbound' && e.service !== undefined, mark)).toMatchObject({
        protocol: 'HBONE',
        service: 'api.shop.svc.cluster.local',
        destination: { address: b.pod.ipv4, port: 8080, identity: workloadIdentity(b.workload) },
      })
      // The destination learns the service from the CONNECT's forwarded host, as ztunnel's does.
      expect(await cp.logged((e) => e.listener === 'inbound-hbone' && e.service !== undefined, mark)).toMatchObject({
        service: 'api.shop.svc.cluster.local',
        serviceNamespace: 'shop',
        destination: { address: b.pod.ipv4, port: 8080 },
      })
    })

    it('refuses connections to the proxy\'s own ports instead of looping', async () => {
      const mark = cp.accessLog.length
      // The pod's own address is not captured (it leaves through lo), so these
      // reach the listeners directly; each refuses rather than connecting to itself.
      for (const port of [15001, 15006]) {
        const result = await tryExchange(connectFrom(a, a.pod.ipv4, port), 'loop')
        expect(result.response).toBe('')
        expect(await cp.logged((e) => e.destination.port === port, mark)).toMatchObject({ outcome: 'refused', reason: expect.stringMatching(/loop/) })
      }
    })

    it('moves 1 GiB intact', { timeout: 180_000 }, async () => {
      const total = 1024 * 1024 * 1024
      const chunk = Buffer.alloc(1024 * 1024)
      const hash = createHash('sha256')
      const socket = await connectFrom(a, b.pod.ipv4, 8081)
      const done = exchangeStream(socket)
      for (let sent = 0; sent < total; sent += chunk.length) {
        randomFillSync(chunk)
        hash.update(chunk)
        if (!socket.write(chunk)) await new Promise((resolve) => socket.once('drain', resolve))
      }
      socket.end()
      const [, bytes, digest] = (await done).trim().split(' ')
      expect(Number(bytes)).toBe(total)
      expect(digest).toBe(hash.digest('hex'))
    })

    it('holds 1,000 concurrent connections and leaves no descriptor behind', { timeout: 120_000 }, async () => {
      const fds = (): number => readdirSync('/proc/self/fd').length
      // Pooled HBONE sessions outlive their connections by design (until idle):
      // each holds one descriptor on each side, both in this process.
      const sessions = (): number =>
        [node1, node2].flatMap((n) => n.proxy.configDump().workloads).reduce((sum, w) => sum + w.hboneSessions.outbound + w.hboneSessions.inbound, 0)
      await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'warm')
      const before = fds()
      const sessionsBefore = sessions()
      const sockets = await Promise.all(Array.from({ length: 1000 }, () => connectFrom(a, b.pod.ipv4, 8080)))
      const echoed = await Promise.all(
        sockets.map(
          (socket, i) =>
            new Promise<string>((resolve, reject) => {
              socket.once('error', reject)
              socket.once('data', (data: Buffer) => resolve(data.toString()))
              socket.write(`conn-${i}`)
            }),
        ),
      )
      expect(echoed).toEqual(sockets.map((_, i) => `conn-${i}`))
      const nodeA = node1.proxy.configDump().workloads.find((w) => w.uid === a.workload.uid)
      expect(nodeA?.connections).toBe(1000)
      await Promise.all(sockets.map((socket) => new Promise((resolve) => socket.end(() => socket.once('close', resolve)))))
      await waitFor(() => node1.proxy.configDump().workloads.every((w) => w.connections === 0) && node2.proxy.configDump().workloads.every((w) => w.connections === 0))
      expect(sessions() - sessionsBefore).toBeGreaterThanOrEqual(2 * 9) // 1,000 streams need 10 sessions of 100
      // A session's thread closes its descriptor before the proxy hears that it closed, so the
      // two counts are compared once they agree: a descriptor left over keeps them apart.
      await waitFor(() => fds() === before + sessions() - sessionsBefore)
      expect(fds()).toBe(before + sessions() - sessionsBefore)
    })

    it('propagates half-close both ways', async () => {
      // The sink answers only after our FIN: the answer proves END_STREAM arrived
      // as a FIN, and our 'end' proves its FIN came back.
      const result = await exchange(await connectFrom(a, b.pod.ipv4, 8081), 'half')
      expect(result.ended).toBe(true)
      expect(result.response).toMatch(/ 4 [0-9a-f]{64}\n$/)
    })

    it('propagates a reset from the app to the client', async () => {
      const result = await exchange(await connectFrom(a, b.pod.ipv4, 8082), 'reset me')
      expect(result.error?.code).toBe('ECONNRESET')
      expect(result.ended).toBe(false)
    })

    it('propagates a reset from the client to the app', async () => {
      const mark = cp.accessLog.length
      const socket = await connectFrom(a, b.pod.ipv4, 8080)
      await new Promise<void>((resolve) => socket.write('x', () => resolve()))
      await new Promise((resolve) => socket.once('data', resolve))
      const before = node2.proxy.configDump().workloads.find((w) => w.uid === b.workload.uid)!.connections
      socket.resetAndDestroy()
      await waitFor(() => node2.proxy.configDump().workloads.find((w) => w.uid === b.workload.uid)!.connections < before)
      expect(await cp.logged((e) => e.listener === 'inbound-hbone' && e.destination.address === b.pod.ipv4, mark)).toMatchObject({ outcome: 'reset' })
    })

    it('closes established connections that a policy change now denies', async () => {
      const mark = cp.accessLog.length
      const socket = await connectFrom(a, b.pod.ipv4, 8080)
      await established(socket, 'before')
      const closed = closedWith(socket)
      cp.policies.upsert(policy('deny-frontend', 'DENY', { principals: ['cluster.local/ns/web/sa/frontend'] }))
      try {
        await closed
        expect(await cp.logged((e) => e.listener === 'inbound-hbone' && e.destination.address === b.pod.ipv4, mark)).toMatchObject({ outcome: expect.stringMatching(/reset|terminated/) })
      } finally {
        cp.policies.replaceAll([])
      }
    })

    it("applies a label change of an enrolled pod in place: policies selecting the new label hold at once, for established connections too", async () => {
      const mark = cp.accessLog.length
      cp.policies.upsert(policy('deny-canary', 'DENY', { principals: ['cluster.local/ns/web/sa/frontend'] }, { scope: 'workload', selector: { track: 'canary' } }))
      const socket = await connectFrom(a, b.pod.ipv4, 8080)
      await established(socket, 'before')
      const closed = closedWith(socket)
      const running = await node2.proxy.addWorkload(b.workload, b.netns)
      const canary = { ...b.workload, labels: { ...b.workload.labels, track: 'canary' } }
      try {
        // The same proxy, not a restart: its listeners and sessions stay.
        expect(await node2.proxy.addWorkload(canary, b.netns)).toBe(running)
        expect(running.workload.labels).toMatchObject({ track: 'canary' })
        await closed
        expect(await cp.logged((e) => e.listener === 'inbound-hbone' && e.destination.address === b.pod.ipv4, mark)).toMatchObject({ outcome: 'terminated', reason: expect.stringContaining('shop/deny-canary') })
        expect((await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'nope')).response).toBe('')
      } finally {
        await node2.proxy.addWorkload(b.workload, b.netns)
        cp.policies.replaceAll([])
      }
      expect(await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'back')).toEqual({ response: 'back', ended: true })
    })

    it('restarts the proxy of an enrolled pod whose identity changed', async () => {
      const running = await node2.proxy.addWorkload(c.workload, c.netns)
      const renamed = { ...c.workload, serviceAccount: 'admin-v2' }
      try {
        const restarted = await node2.proxy.addWorkload(renamed, c.netns)
        expect(restarted).not.toBe(running)
        expect(restarted.identity).toBe(workloadIdentity(renamed))
      } finally {
        await node2.proxy.addWorkload(c.workload, c.netns)
      }
      expect(await exchange(await connectFrom(b, c.pod.ipv4, 8080), 'admin')).toEqual({ response: 'admin', ended: true })
    })

    it('fails closed while a node proxy is gone, and recovers when it is back', async () => {
      await node2.proxy.removeWorkload(b.workload.uid)
      try {
        // b is still captured: a's tunnel finds no 15008 listener, d's plaintext no 15006 one.
        expect((await tryExchange(connectFrom(a, b.pod.ipv4, 8080), 'while down')).response).toBe('')
        expect((await tryExchange(d.netns.connect({ host: b.pod.ipv4, port: 8080 }), 'while down')).response).toBe('')
        // b's own outbound has nowhere to go either (its 15001 is gone).
        expect((await tryExchange(connectFrom(b, d.pod.ipv4, 8080), 'while down')).response).toBe('')
      } finally {
        await node2.proxy.addWorkload(b.workload, b.netns)
      }
      expect(await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'back')).toEqual({ response: 'back', ended: true })
    })

    it('removing capture gives the pod direct connectivity again', async () => {
      const mark = cp.accessLog.length
      await node2.proxy.removeWorkload(c.workload.uid)
      await removeCapture(c.netns)
      try {
        expect(await tryExchange(d.netns.connect({ host: c.pod.ipv4, port: 8080 }), 'direct')).toEqual({ response: 'direct', ended: true })
      } finally {
        await applyCapture(c.netns, {}, { backend: 'iptables' })
        await node2.proxy.addWorkload(c.workload, c.netns)
      }
      // Re-captured with the other backend, traffic goes through the mesh again.
      expect(await exchange(await connectFrom(a, c.pod.ipv4, 8080), 'iptables')).toEqual({ response: 'iptables', ended: true })
      expect(await cp.logged((e) => e.listener === 'inbound-hbone' && e.destination.address === c.pod.ipv4, mark)).toMatchObject({ outcome: 'closed' })
    })


    it('preserves the client address towards the app when asked (IP_TRANSPARENT and route table 100)', async () => {
      const seenBy = async (): Promise<string> => (await exchange(await connectFrom(a, c.pod.ipv4, 8081), 'who')).response.split(' ')[0]!
      expect(await seenBy()).toMatch(new RegExp(`${c.pod.ipv4.replace(/\./g, '\\.')}$`))
      await node2.proxy.removeWorkload(c.workload.uid)
      const preserving = cp.nodeProxy('node-2-preserving', { dataPath, preserveSourceAddress: true })
      try {
        await preserving.proxy.addWorkload(c.workload, c.netns)
        expect(await seenBy()).toMatch(new RegExp(`${a.pod.ipv4.replace(/\./g, '\\.')}$`))
        // Plaintext inbound too: the app sees d, not the pod itself.
        const plain = await exchange(await d.netns.connect({ host: c.pod.ipv4, port: 8081 }), 'who')
        expect(plain.response.split(' ')[0]).toMatch(new RegExp(`${d.pod.ipv4.replace(/\./g, '\\.')}$`))
      } finally {
        await preserving.proxy.removeWorkload(c.workload.uid)
        await node2.proxy.addWorkload(c.workload, c.netns)
      }
    })

    it('removing a workload closes its established connections', async () => {
      const socket = await connectFrom(a, c.pod.ipv4, 8080)
      await established(socket)
      const closed = closedWith(socket)
      await node2.proxy.removeWorkload(c.workload.uid)
      try {
        expect((await closed)?.code).toBe('ECONNRESET')
      } finally {
        await node2.proxy.addWorkload(c.workload, c.netns)
      }
    })

    it('serves new connections right after a workload is enrolled again (CONNECTs that crossed the GOAWAY go to a new session)', async () => {
      // The client side keeps a session to c's old listener; each replacement sends it GOAWAY as the
      // old proxy closes. A CONNECT sent meanwhile is refused unprocessed and sent again.
      for (let round = 0; round < 20; round++) {
        await node2.proxy.removeWorkload(c.workload.uid)
        await node2.proxy.addWorkload(c.workload, c.netns)
        expect(await exchange(await connectFrom(a, c.pod.ipv4, 8080), `round ${round}`)).toEqual({ response: `round ${round}`, ended: true })
      }
    })

    it('drains: stops accepting at once, lets open connections finish, closes the rest at the deadline', async () => {
      const drainer = cp.nodeProxy('node-2-drain', { dataPath })
      await node2.proxy.removeWorkload(c.workload.uid)
      try {
        const proxy = await drainer.proxy.addWorkload(c.workload, c.netns)
        const finishing = await connectFrom(a, c.pod.ipv4, 8080)
        const lingering = await connectFrom(a, c.pod.ipv4, 8080)
        for (const socket of [finishing, lingering]) {
          socket.on('error', () => {})
          await established(socket)
        }
        const lingeringClosed = new Promise<void>((resolve) => lingering.once('close', () => resolve()))
        const drained = proxy.drain({ deadline: 1000 })
        // New plaintext connections are refused at once (the listeners are closed)
        // while the open ones are still served.
        expect((await tryExchange(d.netns.connect({ host: c.pod.ipv4, port: 8080 }), 'new')).response).toBe('')
        // ...and so are new tunnels: the sessions got GOAWAY and the 15008 listener is closed.
        expect((await tryExchange(connectFrom(a, c.pod.ipv4, 8080), 'new tunnel')).response).toBe('')
        expect(await exchange(finishing, 'still served')).toEqual({ response: 'still served', ended: true })
        await drained
        await lingeringClosed
        expect(proxy.activeConnections()).toBe(0)
      } finally {
        await drainer.proxy.close()
        await node2.proxy.addWorkload(c.workload, c.netns)
      }
    })


    it('an HBONE session ends on both nodes when the client side goes away', async () => {
      const inbound = (): number => node2.proxy.configDump().workloads.find((w) => w.uid === b.workload.uid)!.hboneSessions.inbound
      expect(await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'pooled')).toEqual({ response: 'pooled', ended: true })
      expect(inbound()).toBeGreaterThan(0)
      await node1.proxy.removeWorkload(a.workload.uid)
      try {
        // a's FIN reaches b's server side, which closes its session rather than lingering half-open.
        await waitFor(() => inbound() === 0)
      } finally {
        await node1.proxy.addWorkload(a.workload, a.netns)
      }
      expect(await exchange(await connectFrom(a, b.pod.ipv4, 8080), 'fresh')).toEqual({ response: 'fresh', ended: true })
    })

  })
})
