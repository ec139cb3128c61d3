import type { ChildProcess } from 'node:child_process'
import type { Server } from 'node:net'
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { PodEnrollment } from '@ambientkit/core'
import { createNodeAgent } from '@ambientkit/agent'
import { inspectCapture, inspectProbeSnat, openNetns, type Netns } from '@ambientkit/redirect'
import { createTestNetwork, type TestNode, type TestPod } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { exchange, startEchoApp, tryExchange } from '../../proxy/test/support/apps'
import { dig, startDnsmasq, stopProcess } from '../../../test/support/dns'
import { createTestControlPlane, meshWorkload, type TestControlPlane } from '../../proxy/test/support/mesh'
import { createListPodSource, httpGet } from './support/agent-test'

describePrivileged('node agent: DNS proxies and kubelet probes', ['ip', 'nft', 'dig', 'dnsmasq'], () => {
  let network: ReturnType<typeof createTestNetwork>
  let cp: TestControlPlane
  let node: TestNode
  let pod: TestPod
  let resolver: TestPod
  let enrollment: PodEnrollment
  let dnsmasq: ChildProcess
  let nodeNs: Netns
  let podNs: Netns
  let resolverNs: Netns
  let app: Server

  beforeAll(async () => {
    network = createTestNetwork('ak-agentdns')
    cp = await createTestControlPlane()
    node = await network.addNode()
    pod = await network.addPod(node)
    resolver = await network.addPod(node)
    enrollment = { workload: meshWorkload(pod, { name: 'web', namespace: 'shop', serviceAccount: 'web' }), netnsPath: pod.path }
    cp.registry.upsertWorkload(enrollment.workload)
    cp.registry.upsertService({ hostname: 'web.shop.svc.cluster.local', namespace: 'shop', vips: ['10.96.0.30'], ports: { 80: 8080 }, endpoints: [enrollment.workload.uid] })
    dnsmasq = await startDnsmasq(resolver)
    nodeNs = openNetns(node.path)
    podNs = openNetns(pod.path)
    resolverNs = openNetns(resolver.path)
    app = await startEchoApp(podNs, 8080)
  })
  afterAll(async () => {
    app?.close()
    await podNs?.close()
    await resolverNs?.close()
    await nodeNs?.close()
    await stopProcess(dnsmasq)
    await cp?.close()
    await network?.cleanup()
  })

  it("with captureDns, a pod's DNS is answered by its DNS proxy from enrollment until release, which leaves nothing behind", async () => {
    const { proxy } = cp.nodeProxy('node-dns')
    await proxy.start()
    const agent = createNodeAgent({
      nodeProxy: proxy,
      podSource: createListPodSource([enrollment]),
      capture: { captureDns: true },
      dns: { registry: cp.registry, upstreams: [resolver.ipv4] },
      backend: 'nftables',
      probes: { netns: node.path },
    })
    try {
      expect((await agent.start()).failed).toEqual([])
      expect((await dig(pod, [`@${resolver.ipv4}`, 'web.shop.svc.cluster.local'])).answers).toEqual([['web.shop.svc.cluster.local.', '30', 'A', '10.96.0.30']])
      expect((await dig(pod, [`@${resolver.ipv4}`, 'outside.test'])).answers).toEqual([['outside.test.', '77', 'A', '192.0.2.10']])
      // The node proxy's /metrics serves the DNS metrics.
      expect((await httpGet(proxy.adminAddress()!.port, '/metrics')).body).toMatch(/istio_dns_upstream_requests_total\{request_query_type="a",request_protocol="udp",source_workload="web",source_workload_namespace="shop"\} 1/)
      await agent.release()
      expect((await pod.exec('ss', ['-Htuln', 'sport = :15053'])).stdout.trim()).toBe('')
      expect((await inspectCapture(podNs)).status).toBe('absent')
      expect(await inspectProbeSnat(nodeNs)).toEqual({ status: 'absent', backends: [], differences: [] })
    } finally {
      await agent.close()
      await proxy.close()
    }
  })

  it('a DNS proxy that cannot start is reported; the pod stays enrolled, its DNS failing closed, and it is tried again', async () => {
    const { proxy } = cp.nodeProxy('node-dns-broken')
    await proxy.start()
    const source = createListPodSource([enrollment])
    const agent = createNodeAgent({
      nodeProxy: proxy,
      podSource: source,
      capture: { captureDns: true },
      dns: { registry: cp.registry, resolvConf: '/nonexistent/resolv.conf' },
      backend: 'nftables',
      probes: false,
    })
    try {
      const report = await agent.start()
      expect(report.failed).toEqual([{ uid: enrollment.workload.uid, error: expect.stringMatching(/cannot read the upstream resolvers from \/nonexistent\/resolv.conf/) }])
      expect(agent.enrolled()).toEqual([enrollment.workload.uid])
      expect((await inspectCapture(podNs, { config: { captureDns: true } })).status).toBe('present')
      // Captured to 15053, where nothing listens: no answer (dig exits 9), never the resolver's.
      await expect(dig(pod, [`@${resolver.ipv4}`, 'outside.test', '+time=1'])).rejects.toMatchObject({ cause: { code: 9 } })
      expect((await agent.reconcile()).failed).toHaveLength(1)
      await agent.release()
      expect((await inspectCapture(podNs)).status).toBe('absent')
    } finally {
      await agent.close()
      await proxy.close()
    }
  })

  it('refuses captureDns without a registry to answer from', () => {
    const { proxy } = cp.nodeProxy('node-no-registry')
    expect(() => createNodeAgent({ nodeProxy: proxy, podSource: createListPodSource([]), capture: { captureDns: true } })).toThrow(/^dns\.registry: expected the mesh's WorkloadRegistry/)
  })

  for (const probes of ['rewritten', 'not rewritten'] as const) {
    it(`a kubelet probe from the node to a captured STRICT pod ${probes === 'rewritten' ? 'reaches the app' : 'is refused (no node rule)'}`, async () => {
      const { proxy } = cp.nodeProxy(`node-strict-${probes}`, { inboundPlaintext: 'strict' })
      await proxy.start()
      const agent = createNodeAgent({
        nodeProxy: proxy,
        podSource: createListPodSource([enrollment]),
        backend: 'nftables',
        probes: probes === 'rewritten' ? { netns: node.path } : false,
      })
      try {
        expect((await agent.start()).failed).toEqual([])
        // The kubelet is a process of the node: its probe is a TCP connection from a node socket.
        const probe = await tryExchange(nodeNs.connect({ host: pod.ipv4, port: 8080 }), 'GET /healthz')
        const probe6 = await tryExchange(nodeNs.connect({ host: pod.ipv6, port: 8080 }), 'GET /healthz')
        if (probes === 'rewritten') {
          expect([probe.response, probe6.response]).toEqual(['GET /healthz', 'GET /healthz'])
          expect((await inspectProbeSnat(nodeNs, { config: { podAddresses: [pod.ipv4, pod.ipv6] } })).status).toBe('present')
        } else {
          expect([probe.response, probe6.response]).toEqual(['', ''])
        }
        // Anyone else stays under STRICT: a plaintext client in another pod is refused.
        expect((await tryExchange(resolverNs.connect({ host: pod.ipv4, port: 8080 }), 'plaintext')).response).toBe('')
        await agent.release()
        expect(await inspectProbeSnat(nodeNs)).toEqual({ status: 'absent', backends: [], differences: [] })
        // Released: the pod is out of the mesh and reachable directly.
        expect(await exchange(await nodeNs.connect({ host: pod.ipv4, port: 8080 }), 'direct')).toEqual({ response: 'direct', ended: true })
      } finally {
        await agent.close()
        await proxy.close()
      }
    })
  }
})
