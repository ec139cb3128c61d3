import { execFileSync } from 'node:child_process'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { describePrivileged } from '../../../test/support/privileged'
import type { NodeConfig, PodConfig } from '../src/config'

// Namespaces of this test only (the prefix is read when the topology module loads).
process.env.AMBIENTKIT_LOCAL_PREFIX = `akb${process.pid % 100_000}`
const { createNode, createPod, deleteNamespace, demoNamespaces, gatewayMac } = await import('../src/topology')
const { netnsName } = await import('../src/paths')

const node: NodeConfig = { name: 'node-1', podCidr: '10.44.1.0/24', gateway: '10.44.1.1', index: 1 }
const pod = (name: string, ip: string): PodConfig => ({ name, namespace: 'shop', serviceAccount: name, node: node.name, ip, labels: {}, mesh: true, port: 8080 })
const ip = (ns: string, ...args: string[]): string => execFileSync('ip', ['-n', ns, ...args], { encoding: 'utf8' })
const bridgeMac = (): string => /link\/ether (\S+)/.exec(ip(netnsName.node(node.name), 'link', 'show', 'br0'))![1]!

describePrivileged('local mesh topology', ['ip'], () => {
  beforeAll(async () => {
    for (const ns of await demoNamespaces()) await deleteNamespace(ns)
    await createNode(node)
  })

  afterAll(async () => {
    for (const ns of await demoNamespaces()) await deleteNamespace(ns)
  })

  it("keeps the gateway's MAC when pods join its bridge, so the other pods' ARP entries stay right", async () => {
    expect(bridgeMac()).toBe(gatewayMac(node))
    await createPod(pod('a', '10.44.1.2'), node)
    await createPod(pod('b', '10.44.1.3'), node)
    // A port whose MAC is lower than any: a bridge left to the kernel would take it.
    const nodeNs = netnsName.node(node.name)
    ip(nodeNs, 'link', 'add', 'vlow', 'address', '00:00:5e:00:53:01', 'type', 'veth', 'peer', 'name', 'plow')
    ip(nodeNs, 'link', 'set', 'vlow', 'master', 'br0')
    expect(bridgeMac()).toBe(gatewayMac(node))
  })
})
