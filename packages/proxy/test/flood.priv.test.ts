import type { Server, Socket } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { applyCapture } from '@ambientkit/redirect'
import { createTestNetwork, type TestNetwork } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { closedWith, exchange, startEchoApp } from './support/apps'
import { createTestControlPlane, meshPod, meshWorkload, metricLines, type MeshPod, type TestControlPlane } from './support/mesh'
import { dataPaths } from './support/native'

// The descriptor flood of issue 15: a pod outside the mesh opens plain TCP
// connections to a mesh pod's 15008 and never starts TLS, while a mesh pod
// on the other node keeps talking to it. The flooded proxy holds at most
// maxPendingHandshakesPerSource of them at once, closes each after the
// handshake timeout, counts them, and serves the mesh pod throughout.
const PER_SOURCE = 16
const HANDSHAKE_TIMEOUT_MS = 1500
const FLOOD = 300

describePrivileged('flood: never-handshaking connections against a pod\'s 15008', ['ip', 'nft'], () => {
  describe.each(dataPaths('flood'))('%s data path', (dataPath) => {
    let network: TestNetwork
    let cp: TestControlPlane
    let a: MeshPod
    let b: MeshPod
    let outsider: MeshPod
    const apps: Server[] = []
    let flooded: ReturnType<TestControlPlane['nodeProxy']>

    beforeAll(async () => {
      network = createTestNetwork('ak-flood')
      cp = await createTestControlPlane()
      const [n1, n2] = [await network.addNode(), await network.addNode()]
      const [pa, pd, pb] = [await network.addPod(n1), await network.addPod(n1), await network.addPod(n2)]
      a = meshPod(pa, meshWorkload(pa, { name: 'frontend', namespace: 'web', serviceAccount: 'frontend' }))
      b = meshPod(pb, meshWorkload(pb, { name: 'api', namespace: 'shop', serviceAccount: 'api' }))
      // Outside the mesh: not registered, not captured.
      outsider = meshPod(pd, meshWorkload(pd, { name: 'outsider', namespace: 'web', serviceAccount: 'outsider', protocol: 'TCP' }))
      for (const p of [a, b]) cp.registry.upsertWorkload(p.workload)
      apps.push(await startEchoApp(b.netns, 8080))
      const limits = { maxPendingHandshakesPerSource: PER_SOURCE, handshakeTimeout: HANDSHAKE_TIMEOUT_MS }
      const node1 = cp.nodeProxy('node-1', { dataPath, limits })
      flooded = cp.nodeProxy('node-2', { dataPath, limits })
      for (const [node, pod] of [[node1, a], [flooded, b]] as const) {
        await applyCapture(pod.netns, {}, { backend: 'nftables' })
        await node.proxy.addWorkload(pod.workload, pod.netns)
      }
    })

    afterAll(async () => {
      for (const app of apps) app.close()
      await cp?.close()
      await network?.cleanup()
    })

    /** Connections established on b's 15008, as its kernel counts them. */
    const heldOn15008 = async (): Promise<number> => {
      const { stdout } = await b.pod.exec('ss', ['-Htn', 'state', 'established', '( sport = :15008 )'])
      return stdout.split('\n').filter((line) => line.trim() !== '').length
    }

    it('holds at most the per-source limit of them, closes them at the handshake timeout, and serves the mesh throughout', async () => {
      const flood: Socket[] = []
      try {
        for (let i = 0; i < FLOOD; i++) {
          // A shed connection may be reset before its connect is seen: what a flood expects.
          const socket = await outsider.netns.connect({ host: b.pod.ipv4, port: 15008 }).catch(() => undefined)
          socket?.on('error', () => {})
          if (socket !== undefined) flood.push(socket)
          if (i % 50 === 49) {
            const answer = await exchange(await a.netns.connect({ host: b.pod.ipv4, port: 8080, allowHalfOpen: true }), `during the flood ${i}`)
            expect(answer).toEqual({ response: `during the flood ${i}`, ended: true })
          }
        }
        // The flooding source holds PER_SOURCE; a's session (and its reconnects) a few more.
        await expect.poll(heldOn15008, { timeout: 5000 }).toBeLessThanOrEqual(PER_SOURCE + 4)
        const shed = await metricLines(flooded.proxy, 'ambientkit_handshake_failures_total')
        expect(shed.find((line) => line.includes('reason="shed"'))).toMatch(/ [1-9]\d*$/)
        // The ones held are closed at the handshake timeout, and counted.
        await Promise.all(flood.filter((socket) => !socket.destroyed).map((socket) => closedWith(socket)))
        const timedOut = await metricLines(flooded.proxy, 'ambientkit_handshake_failures_total')
        expect(timedOut.find((line) => line.includes('reason="timeout"'))).toMatch(/ [1-9]\d*$/)
        const after = await exchange(await a.netns.connect({ host: b.pod.ipv4, port: 8080, allowHalfOpen: true }), 'after the flood')
        expect(after).toEqual({ response: 'after the flood', ended: true })
      } finally {
        for (const socket of flood) socket.destroy()
      }
    })
  })
})
