// dropInboundUdp with real nftables and iptables in pod namespaces: UDP that
// others start towards a captured pod is dropped, but DNS; the pod's own UDP
// (replies to it, traffic to itself) still flows.
import { once } from 'node:events'
import type { Socket as DgramSocket } from 'node:dgram'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createTestNetwork, type TestNetwork, type TestPod } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { applyCapture, inspectCapture, openNetns, removeCapture, type CaptureBackend, type Netns } from '../src/index'

const APP_PORT = 9999

/** The next datagram `socket` receives, as text; rejects after 5 s. */
async function nextMessage(socket: DgramSocket): Promise<{ text: string; port: number }> {
  const [message, rinfo] = (await once(socket, 'message', { signal: AbortSignal.timeout(5000) })) as [Buffer, { port: number }]
  return { text: message.toString(), port: rinfo.port }
}

describePrivileged('capture: dropInboundUdp', ['ip', 'iptables', 'ip6tables', 'nft'], () => {
  let network: TestNetwork
  let captured: TestPod
  let other: TestPod
  let pod: Netns
  let peer: Netns
  beforeAll(async () => {
    network = createTestNetwork('ak-udp')
    const node = await network.addNode()
    captured = await network.addPod(node)
    other = await network.addPod(node)
    pod = openNetns(captured.path)
    peer = openNetns(other.path)
  })
  afterAll(async () => {
    await pod?.close()
    await peer?.close()
    await network?.cleanup()
  })

  for (const backend of ['nftables', 'iptables'] as CaptureBackend[]) {
    describe(`${backend} backend`, () => {
      for (const family of ['ipv4', 'ipv6'] as const) {
        it(`drops UDP others start to the pod but DNS; replies and the pod's own UDP pass (${family})`, async () => {
          const any = family === 'ipv4' ? '0.0.0.0' : '::'
          const address = family === 'ipv4' ? captured.ipv4 : captured.ipv6
          const peerAddress = family === 'ipv4' ? other.ipv4 : other.ipv6
          const app = await pod.bindUdp({ host: any, port: APP_PORT, ipv6Only: family === 'ipv6' ? true : undefined })
          const dns = await pod.bindUdp({ host: any, port: 53, ipv6Only: family === 'ipv6' ? true : undefined })
          const outside = await peer.bindUdp({ host: any, port: 0 })
          const seenByApp: string[] = []
          app.on('message', (m: Buffer) => seenByApp.push(m.toString()))
          /** Sends to the app port, then to DNS, and waits for the DNS one: datagrams on one veth arrive in order, so the first has arrived by then, or never will. */
          const probe = async (marker: string): Promise<void> => {
            outside.send(`${marker}-app`, APP_PORT, address)
            outside.send(`${marker}-dns`, 53, address)
            expect((await nextMessage(dns)).text).toBe(`${marker}-dns`)
          }
          try {
            // Without the option: UDP reaches the app, as in Istio (capture is TCP only).
            await applyCapture(pod, {}, { backend })
            await probe('default')
            expect(seenByApp).toEqual(['default-app'])

            await applyCapture(pod, { dropInboundUdp: true }, { backend })
            expect((await inspectCapture(pod, { config: { dropInboundUdp: true } })).status).toBe('present')
            await probe('dropped')
            expect(seenByApp).toEqual(['default-app'])

            // A reply to the pod's own datagram is not new to conntrack: it passes.
            app.send('question', outside.address().port, peerAddress)
            const question = await nextMessage(outside)
            outside.send('answer', question.port, address)
            expect((await nextMessage(app)).text).toBe('answer')

            // The pod to itself, at its own address: through lo, never dropped.
            dns.send('to myself', APP_PORT, address)
            expect((await nextMessage(app)).text).toBe('to myself')
          } finally {
            app.close()
            dns.close()
            outside.close()
            await removeCapture(pod)
          }
        })
      }
    })
  }
})
