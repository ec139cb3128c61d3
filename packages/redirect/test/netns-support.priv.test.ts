import { canonicalIp } from '@ambientkit/core'
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import type { AddressInfo, Socket } from 'node:net'
import { expect, it } from 'vitest'
import { createTestNetwork } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { openNetns } from '../src/index'

const namespacesWith = (prefix: string): string[] =>
  execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((line) => line.split(' ')[0]!)
    .filter((name) => name.startsWith(`${prefix}-`))

describePrivileged('test/support/netns: nodes and pods for privileged tests', ['ip', 'sysctl'], () => {
  it('connects pods on one node and across two nodes, IPv4 and IPv6, and deletes everything it made', async () => {
    const network = createTestNetwork('ak-rdsup')
    try {
      const [node1, node2] = [await network.addNode(), await network.addNode()]
      const a = await network.addPod(node1)
      const b = await network.addPod(node1)
      const c = await network.addPod(node2)
      expect([a.ipv4, b.ipv4, c.ipv4, c.ipv6]).toEqual(['10.200.1.2', '10.200.1.3', '10.200.2.2', 'fd00:200:2::2'])
      expect(node1.pods).toEqual([a, b])
      expect(namespacesWith(network.prefix)).toHaveLength(5)

      const nsA = openNetns(a.path)
      const nsC = openNetns(c.path)
      try {
        const server = await nsC.listen({ host: '::', port: 0, ipv6Only: false })
        const { port } = server.address() as AddressInfo
        for (const [host, from] of [
          [c.ipv4, a.ipv4],
          [c.ipv6, a.ipv6],
        ] as const) {
          const accepted = once(server, 'connection') as Promise<[Socket]>
          const client = await nsA.connect({ host, port })
          const [peer] = await accepted
          expect(canonicalIp(peer.remoteAddress!)).toBe(from)
          client.destroy()
          peer.destroy()
        }
        server.close()
        // exec runs programs inside the pod: b's own view of its interfaces.
        expect((await b.exec('ip', ['-6', '-o', 'address', 'show', 'dev', 'eth0', 'scope', 'global'])).stdout).toContain(`${b.ipv6}/64`)
      } finally {
        await nsA.close()
        await nsC.close()
      }
    } finally {
      await network.cleanup()
      await network.cleanup()
    }
    expect(namespacesWith(network.prefix)).toEqual([])
  })

  it('refuses a pod on a foreign node and still cleans up everything', async () => {
    const network = createTestNetwork('ak-rdsup')
    const node = await network.addNode()
    const stranger = { ...node, name: 'not-a-node-of-this-network' }
    await expect(network.addPod(stranger)).rejects.toThrow(/not a node of this network/)
    await network.cleanup()
    expect(namespacesWith(network.prefix)).toEqual([])
  })
})
