import { afterAll, beforeAll, expect, it } from 'vitest'
import type { PodEnrollment } from '@ambientkit/core'
import { createNodeAgent } from '@ambientkit/agent'
import { inspectCapture, inspectProbeSnat, openNetns, type CaptureConfig, type Netns } from '@ambientkit/redirect'
import { createTestNetwork, type TestNetwork, type TestNode, type TestPod } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { createTestControlPlane, meshWorkload, type TestControlPlane } from '../../proxy/test/support/mesh'
import { createListPodSource, httpGet } from './support/agent-test'

// A routing table and connmark of its own: removal must find them from the agent's configuration.
const capture: CaptureConfig = { routeTable: 233, connmark: 0x222 }

describePrivileged('node agent: drift repair while running', ['ip', 'nft'], () => {
  let network: TestNetwork
  let cp: TestControlPlane
  let node: TestNode
  let pod: TestPod
  let enrollment: PodEnrollment
  let nodeNs: Netns
  let podNs: Netns

  beforeAll(async () => {
    network = createTestNetwork('ak-drift')
    cp = await createTestControlPlane()
    node = await network.addNode()
    pod = await network.addPod(node)
    enrollment = { workload: meshWorkload(pod, { name: 'web', namespace: 'shop', serviceAccount: 'web' }), netnsPath: pod.path }
    cp.registry.upsertWorkload(enrollment.workload)
    nodeNs = openNetns(node.path)
    podNs = openNetns(pod.path)
  })
  afterAll(async () => {
    await podNs?.close()
    await nodeNs?.close()
    await cp?.close()
    await network?.cleanup()
  })

  /** Polls the admin server's /metrics until the repair counter of `scope` reads `count`. */
  async function repairsReach(admin: number, scope: 'pod' | 'node', count: number): Promise<void> {
    const pattern = new RegExp(`^ambientkit_capture_drift_repairs_total\\{scope="${scope}"\\} ${count}$`, 'm')
    const deadline = Date.now() + 10_000
    while (!pattern.test((await httpGet(admin, '/metrics')).body)) {
      if (Date.now() > deadline) throw new Error(`no ${count} ${scope} repairs within 10 s:\n${(await httpGet(admin, '/metrics')).body}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  /** Deletes the first rule of `chain` in the nft table `table` of `netns`, as another program would. */
  async function deleteRule(netns: Netns, table: string, chain: string): Promise<void> {
    const listing = (await netns.exec('nft', ['-a', 'list', 'chain', 'inet', table, chain])).stdout
    const handle = /# handle (\d+)\s*$/m.exec(listing.split('\n').filter((line) => !line.includes('chain ') && !line.includes('type ')).join('\n'))?.[1]
    expect(handle).toBeDefined()
    await netns.nft(`delete rule inet ${table} ${chain} handle ${handle}\n`)
  }

  it("a rule deleted from a pod or from the node's probe rewrite while the agent runs is back within the interval, and counted", async () => {
    const { proxy } = cp.nodeProxy('node-drift')
    await proxy.start()
    const admin = proxy.adminAddress()!.port
    const agent = createNodeAgent({ nodeProxy: proxy, podSource: createListPodSource([enrollment]), capture, backend: 'nftables', probes: { netns: node.path }, repairIntervalMs: 200 })
    const probeConfig = { podAddresses: [pod.ipv4, pod.ipv6] }
    try {
      expect((await agent.start()).failed).toEqual([])
      expect((await inspectCapture(podNs, { config: capture })).status).toBe('present')

      await deleteRule(podNs, 'ambientkit', 'nat-output')
      expect((await inspectCapture(podNs, { config: capture })).status).toBe('drifted')
      await repairsReach(admin, 'pod', 1)
      expect(await inspectCapture(podNs, { config: capture })).toEqual({ status: 'present', backends: ['nftables'], differences: [] })

      await deleteRule(nodeNs, 'ambientkit-probes', 'postrouting')
      expect((await inspectProbeSnat(nodeNs, { config: probeConfig })).status).toBe('drifted')
      await repairsReach(admin, 'node', 1)
      expect((await inspectProbeSnat(nodeNs, { config: probeConfig })).status).toBe('present')
      // Nothing else drifted: no repair counted for it.
      await repairsReach(admin, 'pod', 1)

      await agent.release()
      // Released with the agent's routing table and connmark: no ip rule or route left behind.
      expect(await inspectCapture(podNs, { config: capture })).toEqual({ status: 'absent', backends: [], differences: [] })
    } finally {
      await agent.close()
      await proxy.close()
    }
  })

  it('a rule deleted from a pod is repaired within seconds of the change, long before the interval, and counted', async () => {
    const { proxy } = cp.nodeProxy('node-drift-events')
    await proxy.start()
    const admin = proxy.adminAddress()!.port
    // An interval far beyond the test's wait: only the ruleset's change event can bring the check forward.
    const agent = createNodeAgent({ nodeProxy: proxy, podSource: createListPodSource([enrollment]), capture, backend: 'nftables', probes: false, repairIntervalMs: 60_000 })
    try {
      expect((await agent.start()).failed).toEqual([])
      await deleteRule(podNs, 'ambientkit', 'nat-output')
      await repairsReach(admin, 'pod', 1)
      expect(await inspectCapture(podNs, { config: capture })).toEqual({ status: 'present', backends: ['nftables'], differences: [] })
      // The watch outlives the repair's own change of the ruleset.
      await deleteRule(podNs, 'ambientkit', 'nat-output')
      await repairsReach(admin, 'pod', 2)
      expect((await inspectCapture(podNs, { config: capture })).status).toBe('present')
      await agent.release()
    } finally {
      await agent.close()
      await proxy.close()
    }
  })

  it('refuses a repair interval that is not a whole number of milliseconds', () => {
    const { proxy } = cp.nodeProxy('node-drift-bad')
    expect(() => createNodeAgent({ nodeProxy: proxy, podSource: createListPodSource([]), repairIntervalMs: -1 })).toThrow(/^repairIntervalMs: expected milliseconds/)
  })
})
