import type { Server, Socket } from 'node:net'
import { constants } from 'node:os'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AmbientError, ipFamily, workloadIdentity } from '@ambientkit/core'
import { DEFAULT_WORKLOAD_PROXY_PORTS, type NodeProxy, type WorkloadProxy } from '@ambientkit/proxy'
import { applyCapture, RedirectErrorCode, type Netns } from '@ambientkit/redirect'
import { createTestNetwork, type TestNetwork, type TestPod } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { exchange, startEchoApp } from './support/apps'
import { createTestControlPlane, meshPod, meshWorkload, type MeshPod, type TestControlPlane } from './support/mesh'
import { dataPaths } from './support/native'

// Pods without IPv6, captured by IPv4-only rules:
//   node 1: a (web/frontend, mesh), d (a plain client outside the mesh, with IPv6)
//   node 2: b (shop/api, mesh), c (shop/admin, mesh),
//           e (shop/legacy-kernel, mesh: its proxy sees a kernel without IPv6),
//           f (shop/contended, mesh: another program holds [::]:15008 there)
// Disabling IPv6 by sysctl does not make binding `::` fail (the kernel still
// has AF_INET6): the proxies of a, b and c listen dual-stack and take IPv4
// there. f is such a pod too: where a proxy falling back on any error would
// have made itself a silent IPv4-only proxy.
const PORTS = Object.values(DEFAULT_WORKLOAD_PROXY_PORTS)

function boundOn(address: '::' | '0.0.0.0'): WorkloadProxy['listeners'] {
  const family = address === '::' ? 6 : 4
  return {
    outbound: [{ address, port: DEFAULT_WORKLOAD_PROXY_PORTS.outbound, family }],
    'inbound-plaintext': [{ address, port: DEFAULT_WORKLOAD_PROXY_PORTS.inboundPlaintext, family }],
    'inbound-hbone': [{ address, port: DEFAULT_WORKLOAD_PROXY_PORTS.inbound, family }],
  }
}

async function disableIpv6(pod: TestPod): Promise<void> {
  const keys = ['all', 'default', 'lo', 'eth0'].map((dev) => `net.ipv6.conf.${dev}.disable_ipv6=1`)
  await pod.exec('sysctl', ['-qw', ...keys])
}

/**
 * The kernel's view, not only the proxy's: the local address of every
 * listening TCP socket in the pod, sorted. ss shows a dual-stack `::` socket
 * as `*:port` and an IPv6-only one as `[::]:port`.
 */
async function listening(pod: TestPod): Promise<string[]> {
  const lines = (await pod.exec('ss', ['-H', '-t', '-l', '-n'])).stdout.trim().split('\n')
  return lines.map((line) => line.trim().split(/\s+/)[3] ?? '').sort()
}

/**
 * A kernel built without IPv6 (booted with `ipv6.disable=1`) refuses every
 * AF_INET6 socket with EAFNOSUPPORT. This kernel has IPv6 built in and no
 * pod setting takes it away, so the proxy gets the pod's real handle with
 * that one refusal added: an IPv6 listen fails as the redirect layer reports
 * the addon's `socket()` failure (`nativeError`). Everything else, the IPv4
 * listens included, is the real namespace's.
 */
function withoutIpv6InKernel(netns: Netns): Netns {
  const refuseIpv6 = (host: string | undefined, port: number): void => {
    if (host === undefined || ipFamily(host) !== 6) return
    const cause = Object.assign(new Error('socket: Address family not supported by protocol'), { errno: constants.errno.EAFNOSUPPORT, syscall: 'socket' })
    throw new AmbientError(RedirectErrorCode.Socket, `cannot listen on ${host} port ${port} in ${netns.path}: ${cause.message} (EAFNOSUPPORT)`, {
      cause,
      details: { path: netns.path, host, port, errno: cause.errno, errnoName: 'EAFNOSUPPORT', syscall: cause.syscall },
    })
  }
  return {
    path: netns.path,
    id: netns.id,
    async listen(options) {
      refuseIpv6(options.host, options.port)
      return netns.listen(options)
    },
    listenFd(options) {
      refuseIpv6(options.host, options.port)
      return netns.listenFd(options)
    },
    accept: (fd, onSocket, onPause) => netns.accept(fd, onSocket, onPause),
    originalDestination: (fd, family) => netns.originalDestination(fd, family),
    async bindUdp(options) {
      refuseIpv6(options?.host, options?.port ?? 0)
      return netns.bindUdp(options)
    },
    bindUdpFd(options) {
      refuseIpv6(options?.host, options?.port ?? 0)
      return netns.bindUdpFd(options)
    },
    connect: (options) => netns.connect(options),
    connectFd: (options) => netns.connectFd(options),
    runSync: (fn) => netns.runSync(fn),
    exec: (command, args, options) => netns.exec(command, args, options),
    nft: (script, options) => netns.nft(script, options),
    close: () => netns.close(),
    [Symbol.asyncDispose]: () => netns.close(),
  }
}

describePrivileged('workload proxy in a pod without IPv6', ['ip', 'nft', 'ss'], () => {
  describe.each(dataPaths('ipv4-only'))('%s data path', (dataPath) => {
    let network: TestNetwork
    let cp: TestControlPlane
    let node2: NodeProxy
    let a: MeshPod
    let b: MeshPod
    let c: MeshPod
    let d: MeshPod
    let e: MeshPod
    let f: MeshPod
    const proxies = new Map<MeshPod, WorkloadProxy>()
    const servers: Server[] = []
    let holder: Server | undefined

    const connectFrom = (from: MeshPod, host: string, port: number): Promise<Socket> =>
      // An ordinary app socket: no mark, so the pod's capture rules apply.
      from.netns.connect({ host, port, allowHalfOpen: true })

    /** An echo through HBONE from `from` to `to`'s app, with both proxies' log lines. */
    const expectHbone = async (from: MeshPod, to: MeshPod): Promise<void> => {
      const mark = cp.accessLog.length
      const payload = `${from.workload.name} to ${to.workload.name}`
      expect(await exchange(await connectFrom(from, to.pod.ipv4, 8080), payload)).toEqual({ response: payload, ended: true })
      expect(await cp.logged((entry) => entry.listener === 'outbound' && entry.destination.address === to.pod.ipv4, mark)).toMatchObject({
        protocol: 'HBONE',
        outcome: 'closed',
        destination: { identity: workloadIdentity(to.workload), port: 8080 },
        bytesSent: payload.length,
        bytesReceived: payload.length,
      })
      expect(await cp.logged((entry) => entry.listener === 'inbound-hbone' && entry.destination.address === to.pod.ipv4, mark)).toMatchObject({
        source: { identity: workloadIdentity(from.workload) },
        outcome: 'closed',
      })
    }

    /** A plaintext echo from d, outside the mesh, to `to`'s app through its inbound plaintext listener. */
    const expectPlaintext = async (to: MeshPod): Promise<void> => {
      const mark = cp.accessLog.length
      const payload = `plain to ${to.workload.name}`
      expect(await exchange(await d.netns.connect({ host: to.pod.ipv4, port: 8080 }), payload)).toEqual({ response: payload, ended: true })
      expect(await cp.logged((entry) => entry.listener === 'inbound-plaintext' && entry.destination.address === to.pod.ipv4, mark)).toMatchObject({
        outcome: 'closed',
        source: { address: d.pod.ipv4 },
        bytesSent: payload.length,
      })
    }

    beforeAll(async () => {
      network = createTestNetwork('ak-v4')
      cp = await createTestControlPlane()
      const [n1, n2] = [await network.addNode(), await network.addNode()]
      const [pa, pd] = [await network.addPod(n1), await network.addPod(n1)]
      const [pb, pc, pe, pf] = [await network.addPod(n2), await network.addPod(n2), await network.addPod(n2), await network.addPod(n2)]
      a = meshPod(pa, meshWorkload(pa, { name: 'frontend', namespace: 'web', serviceAccount: 'frontend', addresses: [pa.ipv4] }))
      b = meshPod(pb, meshWorkload(pb, { name: 'api', namespace: 'shop', serviceAccount: 'api', addresses: [pb.ipv4] }))
      c = meshPod(pc, meshWorkload(pc, { name: 'admin', namespace: 'shop', serviceAccount: 'admin', addresses: [pc.ipv4] }))
      d = meshPod(pd, meshWorkload(pd, { name: 'legacy', namespace: 'web', serviceAccount: 'legacy', protocol: 'TCP' }))
      e = meshPod(pe, meshWorkload(pe, { name: 'legacy-kernel', namespace: 'shop', serviceAccount: 'legacy-kernel', addresses: [pe.ipv4] }))
      f = meshPod(pf, meshWorkload(pf, { name: 'contended', namespace: 'shop', serviceAccount: 'contended', addresses: [pf.ipv4] }))
      for (const p of [a, b, c, e, f]) {
        await disableIpv6(p.pod)
        cp.registry.upsertWorkload(p.workload)
        servers.push(await startEchoApp(p.netns, 8080))
        // The default config also captures IPv6, whose route the kernel refuses here (EACCES).
        await applyCapture(p.netns, { ipv6: false }, { backend: 'nftables' })
      }
      const node1 = cp.nodeProxy('node-1', { dataPath }).proxy
      node2 = cp.nodeProxy('node-2', { dataPath }).proxy
      for (const [node, p] of [[node1, a], [node2, b], [node2, c]] as const) proxies.set(p, await node.addWorkload(p.workload, p.netns))
    })

    afterAll(async () => {
      for (const server of servers) server.close()
      holder?.close()
      await cp?.close()
      await network?.cleanup()
    })

    it('the mesh pods have no IPv6 address', async () => {
      for (const p of [a, b, c, e, f]) expect((await p.pod.exec('ip', ['-6', '-o', 'address', 'show'])).stdout).toBe('')
    })

    it('listens dual-stack when IPv6 is only disabled by sysctl', async () => {
      for (const p of [a, b, c]) {
        expect(proxies.get(p)?.listeners).toEqual(boundOn('::'))
        expect(await listening(p.pod)).toEqual(['*:8080', ...PORTS.map((port) => `*:${port}`)].sort())
      }
    })

    it('carries pod → pod traffic through HBONE on the dual-stack listeners, both ways', async () => {
      await expectHbone(a, b)
      await expectHbone(b, a)
    })

    it('serves plaintext inbound on the dual-stack listener', async () => {
      await expectPlaintext(b)
    })

    it('refuses to start, holding nothing, when another program holds [::]:15008', async () => {
      const port = DEFAULT_WORKLOAD_PROXY_PORTS.inbound
      holder = await f.netns.listen({ host: '::', port, ipv6Only: true })
      await expect(node2.addWorkload(f.workload, f.netns)).rejects.toMatchObject({
        code: RedirectErrorCode.Socket,
        message: expect.stringMatching(new RegExp(`port ${port} .*EADDRINUSE`)),
        details: { errnoName: 'EADDRINUSE', port },
      })
      // The outbound and plaintext listeners opened before the failure are closed again.
      expect(await listening(f.pod)).toEqual(['*:8080', `[::]:${port}`].sort())
    })

    it('starts once the port is free again, and carries traffic', async () => {
      await new Promise((resolve) => holder?.close(resolve))
      proxies.set(f, await node2.addWorkload(f.workload, f.netns))
      expect(proxies.get(f)?.listeners).toEqual(boundOn('::'))
      await expectHbone(a, f)
    })

    it('falls back to IPv4 listeners when the kernel has no IPv6 at all', async () => {
      proxies.set(e, await node2.addWorkload(e.workload, withoutIpv6InKernel(e.netns)))
      expect(proxies.get(e)?.listeners).toEqual(boundOn('0.0.0.0'))
      expect(await listening(e.pod)).toEqual(['*:8080', ...PORTS.map((port) => `0.0.0.0:${port}`)].sort())
    })

    it('carries HBONE both ways and plaintext inbound through the IPv4 listeners', async () => {
      await expectHbone(a, e)
      await expectHbone(e, a)
      await expectPlaintext(e)
    })
  })
})
