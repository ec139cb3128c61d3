import { canonicalIp } from '@ambientkit/core'
import type { Server, Socket } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createTestNetwork, type TestNamespace, type TestNode, type TestPod } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { rulesSnapshot } from './support/rules-snapshot'
import {
  applyCapture,
  applyProbeSnat,
  INBOUND_PORT,
  inspectProbeSnat,
  openNetns,
  PROBE_ADDRESS_IPV4,
  PROBE_ADDRESS_IPV6,
  PROXY_MARK,
  removeProbeSnat,
  type CaptureBackend,
  type Netns,
} from '../src/index'

const closeServer = (server: Server): Promise<void> => new Promise((resolve) => server.close(() => resolve()))

const rulesOf = (ns: TestNamespace): Promise<string> => rulesSnapshot(ns)

describePrivileged('the node-side rewrite of kubelet probes', ['ip', 'iptables', 'ip6tables', 'iptables-save', 'nft'], () => {
  const network = createTestNetwork('ak-rdprobe')
  const handles: Netns[] = []
  let node: TestNode
  let captured: TestPod
  let plain: TestPod
  let remote: TestPod
  let nodeNs: Netns
  let remoteNs: Netns
  let inbound: Server
  let app: Server
  let plainApp: Server

  /** Where a connection to `host`:8080 lands (the app or the capture's inbound listener) and the source it arrives from. */
  const landing = async (from: Netns, host: string, servers: Record<string, Server>): Promise<{ on: string; peer: string }> => {
    const arrived = new Promise<{ on: string; peer: string }>((resolve) => {
      for (const [on, server] of Object.entries(servers)) {
        server.once('connection', (socket: Socket) => {
          resolve({ on, peer: canonicalIp(socket.remoteAddress ?? '') })
          socket.destroy()
        })
      }
    })
    const client = await from.connect({ host, port: 8080 })
    try {
      return await arrived
    } finally {
      client.destroy()
      for (const server of Object.values(servers)) server.removeAllListeners('connection')
    }
  }
  const where = (from: Netns, host: string): Promise<{ on: string; peer: string }> => landing(from, host, { app, inbound })

  beforeAll(async () => {
    node = await network.addNode()
    const other = await network.addNode()
    captured = await network.addPod(node)
    plain = await network.addPod(node)
    remote = await network.addPod(other)
    const open = (ns: TestNamespace): Netns => {
      const handle = openNetns(ns.path)
      handles.push(handle)
      return handle
    }
    nodeNs = open(node)
    remoteNs = open(remote)
    const capturedNs = open(captured)
    await applyCapture(capturedNs, {}, { backend: 'nftables' })
    // A stand-in for the proxy's plaintext inbound listener: what capture takes lands here.
    inbound = await capturedNs.listen({ host: '::', port: INBOUND_PORT, ipv6Only: false, mark: PROXY_MARK })
    app = await capturedNs.listen({ host: '::', port: 8080, ipv6Only: false })
    plainApp = await open(plain).listen({ host: '::', port: 8080, ipv6Only: false })
  })
  afterAll(async () => {
    await Promise.all([inbound, app, plainApp].filter(Boolean).map(closeServer))
    for (const handle of handles) await handle.close()
    await network.cleanup()
  })

  it("without the rewrite, the node's probe to a captured pod is captured like any other inbound connection", async () => {
    expect(await where(nodeNs, captured.ipv4)).toEqual({ on: 'inbound', peer: node.ipv4 })
    expect(await inspectProbeSnat(nodeNs)).toEqual({ status: 'absent', backends: [], differences: [] })
  })

  for (const backend of ['nftables', 'iptables'] as const satisfies readonly CaptureBackend[]) {
    describe(`${backend} backend`, () => {
      const config = (): { podAddresses: string[] } => ({ podAddresses: [captured.ipv4, captured.ipv6] })
      let before: string

      beforeAll(async () => {
        before = await rulesOf(node)
        expect(await applyProbeSnat(nodeNs, config(), { backend })).toEqual({ backend })
      })
      afterAll(() => removeProbeSnat(nodeNs))

      it('reports the rewrite as present, in this backend', async () => {
        expect(await inspectProbeSnat(nodeNs, { config: config() })).toEqual({ status: 'present', backends: [backend], differences: [] })
      })

      it("a probe from the node's own socket reaches the app from the probe address, IPv4 and IPv6", async () => {
        expect(await where(nodeNs, captured.ipv4)).toEqual({ on: 'app', peer: PROBE_ADDRESS_IPV4 })
        expect(await where(nodeNs, captured.ipv6)).toEqual({ on: 'app', peer: PROBE_ADDRESS_IPV6 })
      })

      it('traffic the node only forwards keeps its source and stays captured', async () => {
        expect(await where(remoteNs, captured.ipv4)).toEqual({ on: 'inbound', peer: remote.ipv4 })
        expect(await where(remoteNs, captured.ipv6)).toEqual({ on: 'inbound', peer: remote.ipv6 })
      })

      it('pods not listed are left alone', async () => {
        expect(await landing(nodeNs, plain.ipv4, { app: plainApp })).toEqual({ on: 'app', peer: node.ipv4 })
      })

      it('applying twice equals applying once; a new pod list replaces the old one', async () => {
        const applied = await rulesOf(node)
        await applyProbeSnat(nodeNs, config(), { backend })
        expect(await rulesOf(node)).toBe(applied)
        await applyProbeSnat(nodeNs, { podAddresses: [plain.ipv4] }, { backend })
        expect((await inspectProbeSnat(nodeNs, { config: config() })).status).toBe('drifted')
        expect(await where(nodeNs, captured.ipv4)).toEqual({ on: 'inbound', peer: node.ipv4 })
        await applyProbeSnat(nodeNs, config(), { backend })
        expect(await rulesOf(node)).toBe(applied)
      })

      it('reports a deleted rule as drift, naming it, and repairs it by applying again', async () => {
        if (backend === 'nftables') await node.exec('nft', ['flush', 'chain', 'inet', 'ambientkit-probes', 'postrouting'])
        else await node.exec('iptables', ['-t', 'nat', '-D', 'POSTROUTING', '-j', 'AMBIENTKIT_PROBES'])
        const drifted = await inspectProbeSnat(nodeNs, { config: config() })
        expect(drifted.status).toBe('drifted')
        expect(drifted.differences.join('\n')).toMatch(backend === 'nftables' ? /missing rule "ip daddr 10\.200\.1\.2 / : /missing jump "-A POSTROUTING -j AMBIENTKIT_PROBES"/)
        await applyProbeSnat(nodeNs, config(), { backend })
        expect((await inspectProbeSnat(nodeNs, { config: config() })).status).toBe('present')
      })

      it("with sourceUid, only that user's sockets are rewritten", async () => {
        await applyProbeSnat(nodeNs, { ...config(), sourceUid: 0 }, { backend })
        expect(await where(nodeNs, captured.ipv4)).toEqual({ on: 'app', peer: PROBE_ADDRESS_IPV4 })
        // This test runs as root (uid 0): a rewrite for another user leaves its probes captured.
        await applyProbeSnat(nodeNs, { ...config(), sourceUid: 4242 }, { backend })
        expect(await where(nodeNs, captured.ipv6)).toEqual({ on: 'inbound', peer: node.ipv6 })
        await applyProbeSnat(nodeNs, config(), { backend })
      })

      it('removing restores the node exactly, and is idempotent', async () => {
        expect(await removeProbeSnat(nodeNs)).toEqual({ removed: true })
        expect(await rulesOf(node)).toBe(before)
        expect(await removeProbeSnat(nodeNs)).toEqual({ removed: false })
        expect(await inspectProbeSnat(nodeNs)).toEqual({ status: 'absent', backends: [], differences: [] })
        await applyProbeSnat(nodeNs, config(), { backend })
      })
    })
  }

  it("'auto' picks nftables, and removing leaves the node's own nat rules as they were", async () => {
    await node.exec('iptables', ['-t', 'nat', '-A', 'POSTROUTING', '-s', '10.200.9.0/24', '-j', 'MASQUERADE'])
    const before = await rulesOf(node)
    expect(await applyProbeSnat(nodeNs, { podAddresses: [captured.ipv4] })).toEqual({ backend: 'nftables' })
    await applyProbeSnat(nodeNs, { podAddresses: [captured.ipv4] }, { backend: 'iptables' })
    const both = await inspectProbeSnat(nodeNs, { config: { podAddresses: [captured.ipv4] } })
    expect(both).toMatchObject({ status: 'drifted', backends: ['nftables', 'iptables'], differences: ['probe SNAT rules in both nftables and iptables'] })
    await removeProbeSnat(nodeNs)
    expect(await rulesOf(node)).toBe(before)
    await node.exec('iptables', ['-t', 'nat', '-D', 'POSTROUTING', '-s', '10.200.9.0/24', '-j', 'MASQUERADE'])
  })

  it('refuses a bad configuration or backend before touching the node', async () => {
    const before = await rulesOf(node)
    await expect(applyProbeSnat(nodeNs, { podAddresses: ['not-an-ip'] })).rejects.toMatchObject({ code: 'ERR_AMBIENT_REDIRECT_INVALID_CONFIG' })
    await expect(applyProbeSnat(nodeNs, {}, { backend: 'ebpf' as CaptureBackend })).rejects.toMatchObject({ code: 'ERR_AMBIENT_INVALID_ARGUMENT' })
    expect(await rulesOf(node)).toBe(before)
  })
})
