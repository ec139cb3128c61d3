import { canonicalIp, isAmbientError } from '@ambientkit/core'
import { once } from 'node:events'
import { closeSync, openSync } from 'node:fs'
import type { AddressInfo, Server, Socket } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createTestNetwork, type TestNamespace, type TestNode, type TestPod } from '../../../test/support/netns'
import { withEnv } from '../../../test/support/env'
import { describePrivileged } from '../../../test/support/privileged'
import { rulesSnapshot, RULE_LISTINGS } from './support/rules-snapshot'
import {
  applyCapture,
  HBONE_PORT,
  INBOUND_PORT,
  inspectCapture,
  openNetns,
  originalDestination,
  OUTBOUND_PORT,
  PROBE_ADDRESS_IPV4,
  PROBE_ADDRESS_IPV6,
  PROXY_MARK,
  RedirectErrorCode,
  removeCapture,
  type CaptureBackend,
  type Netns,
} from '../src/index'

const nextConnection = (server: Server): Promise<Socket> => once(server, 'connection').then(([socket]) => socket as Socket)
const closeServer = (server: Server): Promise<void> => new Promise((resolve) => server.close(() => resolve()))

/** Counts connections a server accepts, so a test can show one never arrived; `stop()` detaches. */
function countConnections(server: Server): { count: () => number; stop: () => void } {
  let n = 0
  const onConnection = (): void => {
    n += 1
  }
  server.on('connection', onConnection)
  return { count: () => n, stop: () => server.off('connection', onConnection) }
}

const peerOf = (socket: Socket): string => canonicalIp(socket.remoteAddress ?? '')

/** Everything capture could touch in a namespace, as text, without counters and comments. */
const snapshot = (ns: TestNamespace): Promise<string> =>
  rulesSnapshot(ns, [
    ...RULE_LISTINGS,
    ['ip', '-4', 'rule'],
    ['ip', '-6', 'rule'],
    ['ip', '-4', 'route', 'show', 'table', 'all'],
    ['ip', '-6', 'route', 'show', 'table', 'all'],
  ])

async function expectCode(promise: Promise<unknown>, code: string): Promise<string> {
  try {
    await promise
  } catch (err) {
    if (!isAmbientError(err)) throw err
    expect(err.code).toBe(code)
    return err.message
  }
  throw new Error(`expected ${code}, nothing was thrown`)
}

describePrivileged('capture inside pod namespaces', ['ip', 'iptables', 'ip6tables', 'iptables-save', 'nft'], () => {
  const network = createTestNetwork('ak-rdcap')
  let node: TestNode
  let nodeNs: Netns
  const handles: Netns[] = []
  const open = (pod: TestNamespace): Netns => {
    const handle = openNetns(pod.name)
    handles.push(handle)
    return handle
  }

  beforeAll(async () => {
    node = await network.addNode()
    nodeNs = open(node)
    // The kubelet's probes come from the node, SNATed to the probe address.
    await node.exec('ip', ['address', 'add', `${PROBE_ADDRESS_IPV4}/32`, 'dev', 'br0'])
    await node.exec('ip', ['address', 'add', `${PROBE_ADDRESS_IPV6}/128`, 'dev', 'br0', 'nodad'])
  })
  afterAll(async () => {
    for (const handle of handles) await handle.close()
    await network.cleanup()
  })

  // nftables runs in-process through libnftables; AMBIENTKIT_NFT=program makes it run the nft program instead.
  const variants: ReadonlyArray<{ backend: CaptureBackend; nft?: 'library' | 'program' }> = [
    { backend: 'nftables', nft: 'library' },
    { backend: 'nftables', nft: 'program' },
    { backend: 'iptables' },
  ]
  for (const { backend, nft } of variants) {
    describe(`${backend} backend${nft === undefined ? '' : ` (nft ${nft})`}`, () => {
      let client: TestPod
      let server: TestPod
      let outside: TestPod
      let nsClient: Netns
      let nsServer: Netns
      let nsOutside: Netns
      let outbound: Server
      let inbound: Server
      let hbone: Server
      let app: Server

      const nftMode = process.env.AMBIENTKIT_NFT

      beforeAll(async () => {
        if (nft === 'program') process.env.AMBIENTKIT_NFT = 'program'
        client = await network.addPod(node)
        server = await network.addPod(node)
        outside = await network.addPod(node)
        nsClient = open(client)
        nsServer = open(server)
        nsOutside = open(outside)
        expect(await applyCapture(nsClient, {}, { backend })).toEqual({ backend })
        expect(await applyCapture(nsServer, {}, { backend })).toEqual({ backend })
        outbound = await nsClient.listen({ host: '::', port: OUTBOUND_PORT, ipv6Only: false, mark: PROXY_MARK })
        inbound = await nsServer.listen({ host: '::', port: INBOUND_PORT, ipv6Only: false, mark: PROXY_MARK })
        hbone = await nsServer.listen({ host: '::', port: HBONE_PORT, ipv6Only: false, mark: PROXY_MARK })
        app = await nsServer.listen({ host: '::', port: 8080, ipv6Only: false })
      })
      afterAll(async () => {
        if (nftMode === undefined) delete process.env.AMBIENTKIT_NFT
        else process.env.AMBIENTKIT_NFT = nftMode
        await Promise.all([outbound, inbound, hbone, app].filter(Boolean).map(closeServer))
      })

      it('reports capture as present, in this backend', async () => {
        expect(await inspectCapture(nsClient)).toEqual({ status: 'present', backends: [backend], differences: [] })
        expect(await inspectCapture(nsOutside)).toEqual({ status: 'absent', backends: [], differences: [] })
      })

      for (const family of ['ipv4', 'ipv6'] as const) {
        it(`an app connecting anywhere lands on ${OUTBOUND_PORT} with its original destination (${family})`, async () => {
          for (const [target, port] of [
            [family === 'ipv4' ? server.ipv4 : server.ipv6, 8080],
            [family === 'ipv4' ? outside.ipv4 : outside.ipv6, 443],
            [family === 'ipv4' ? '10.77.0.1' : 'fd77::1', 5432],
          ] as const) {
            const accepted = nextConnection(outbound)
            const appSocket = await nsClient.connect({ host: target, port })
            const proxied = await accepted
            expect(originalDestination(proxied)).toEqual({ address: target, port, family: family === 'ipv4' ? 4 : 6 })
            appSocket.destroy()
            proxied.destroy()
          }
        })

        it(`a socket marked 0x539 bypasses outbound capture (${family})`, async () => {
          const plain = await nsOutside.listen({ host: family === 'ipv4' ? outside.ipv4 : outside.ipv6, port: 0 })
          const outboundSeen = countConnections(outbound)
          try {
            const accepted = nextConnection(plain)
            const socket = await nsClient.connect({ host: family === 'ipv4' ? outside.ipv4 : outside.ipv6, port: (plain.address() as AddressInfo).port, mark: PROXY_MARK })
            const peer = await accepted
            expect(peerOf(peer)).toBe(family === 'ipv4' ? client.ipv4 : client.ipv6)
            expect(outboundSeen.count()).toBe(0)
            socket.destroy()
            peer.destroy()
          } finally {
            outboundSeen.stop()
            await closeServer(plain)
          }
        })

        it(`inbound connections land on ${INBOUND_PORT}, except port ${HBONE_PORT} (${family})`, async () => {
          const host = family === 'ipv4' ? server.ipv4 : server.ipv6
          const toInbound = nextConnection(inbound)
          const plain = await nsOutside.connect({ host, port: 8080 })
          const captured = await toInbound
          expect(originalDestination(captured)).toEqual({ address: host, port: 8080, family: family === 'ipv4' ? 4 : 6 })
          expect(peerOf(captured)).toBe(family === 'ipv4' ? outside.ipv4 : outside.ipv6)
          plain.destroy()
          captured.destroy()

          const inboundSeen = countConnections(inbound)
          const toHbone = nextConnection(hbone)
          const tunnel = await nsOutside.connect({ host, port: HBONE_PORT })
          const direct = await toHbone
          inboundSeen.stop()
          expect(peerOf(direct)).toBe(family === 'ipv4' ? outside.ipv4 : outside.ipv6)
          expect(inboundSeen.count()).toBe(0)
          tunnel.destroy()
          direct.destroy()
        })

        it(`probe-source and loopback traffic are not captured (${family})`, async () => {
          const host = family === 'ipv4' ? server.ipv4 : server.ipv6
          const inboundSeen = countConnections(inbound)
          const accepted = nextConnection(app)
          const probe = await nodeNs.connect({ host, port: 8080, localAddress: family === 'ipv4' ? PROBE_ADDRESS_IPV4 : PROBE_ADDRESS_IPV6 })
          const peer = await accepted
          expect(peerOf(peer)).toBe(family === 'ipv4' ? PROBE_ADDRESS_IPV4 : PROBE_ADDRESS_IPV6)
          probe.destroy()
          peer.destroy()

          const outboundSeen = countConnections(outbound)
          const local = await nsClient.listen({ host: family === 'ipv4' ? '127.0.0.1' : '::1', port: 0 })
          const localAccepted = nextConnection(local)
          const loop = await nsClient.connect({ host: family === 'ipv4' ? '127.0.0.1' : '::1', port: (local.address() as AddressInfo).port })
          ;(await localAccepted).destroy()
          loop.destroy()
          await closeServer(local)
          inboundSeen.stop()
          outboundSeen.stop()
          expect([inboundSeen.count(), outboundSeen.count()]).toEqual([0, 0])
        })
        it(`source-preserving inbound: the proxy reaches the app as the original client and gets the replies (${family})`, async () => {
          const [appHost, clientHost] = family === 'ipv4' ? [server.ipv4, outside.ipv4] : [server.ipv6, outside.ipv6]
          const accepted = nextConnection(app)
          // What the proxy does for an inbound connection: a marked, transparent socket bound to the client's address.
          const upstream = await nsServer.connect({ host: appHost, port: 8080, mark: PROXY_MARK, transparent: true, localAddress: clientHost })
          const appSide = await accepted
          expect(peerOf(appSide)).toBe(clientHost)
          // The app's reply is addressed to the outside pod; the ip rule and table 100 bring it back to the proxy.
          appSide.write('reply')
          const [data] = (await once(upstream, 'data')) as [Buffer]
          expect(data.toString()).toBe('reply')
          upstream.destroy()
          appSide.destroy()
        })
      }

      it('applying twice equals applying once', async () => {
        const once1 = await snapshot(client)
        await applyCapture(nsClient, {}, { backend })
        expect(await snapshot(client)).toBe(once1)
        expect((await inspectCapture(nsClient)).status).toBe('present')
      })

      it('reports a deleted rule or ip rule as drift and repairs it by applying again', async () => {
        if (backend === 'iptables') {
          await client.exec('iptables', ['-t', 'nat', '-D', 'AMBIENTKIT_OUTPUT', '-p', 'tcp', '-m', 'mark', '--mark', '0x111/0xfff', '-j', 'RETURN'])
        } else {
          const { stdout } = await client.exec('nft', ['-a', 'list', 'chain', 'inet', 'ambientkit', 'nat-output'])
          const handle = /ct mark & 0x00000fff == 0x00000111|meta mark & 0x00000fff == 0x00000111 return # handle (\d+)/.exec(stdout)?.[1]
          expect(handle).toBeDefined()
          await client.exec('nft', ['delete', 'rule', 'inet', 'ambientkit', 'nat-output', 'handle', handle!])
        }
        await client.exec('ip', ['-6', 'rule', 'del', 'fwmark', '0x111/0xfff', 'lookup', '100'])
        const drifted = await inspectCapture(nsClient)
        expect(drifted.status).toBe('drifted')
        expect(drifted.differences).toEqual([
          expect.stringMatching(backend === 'iptables' ? /^iptables ipv4 nat AMBIENTKIT_OUTPUT: missing rule "-A AMBIENTKIT_OUTPUT -p tcp -m mark --mark 0x111\/0xfff -j RETURN"$/ : /^nftables inet ambientkit chain nat-output: missing rule "meta l4proto tcp meta mark & 0x00000fff == 0x00000111 return"$/),
          'ipv6: missing "ip rule fwmark 0x111/0xfff lookup 100"',
        ])
        await applyCapture(nsClient, {}, { backend })
        expect(await inspectCapture(nsClient)).toEqual({ status: 'present', backends: [backend], differences: [] })
      })

      it('repairs a namespace where part of capture was deleted, with one jump into each chain', async () => {
        const pod = await network.addPod(node)
        const ns = open(pod)
        await applyCapture(ns, {}, { backend })
        if (backend === 'iptables') {
          // Our mangle chains gone, nat intact: a one-run restore for a fresh namespace would commit mangle and fail on nat.
          for (const [chain, builtin] of [['AMBIENTKIT_PRERT', 'PREROUTING'], ['AMBIENTKIT_OUTPUT', 'OUTPUT']] as const) {
            await pod.exec('iptables', ['-t', 'mangle', '-D', builtin, '-j', chain])
            await pod.exec('iptables', ['-t', 'mangle', '-F', chain])
            await pod.exec('iptables', ['-t', 'mangle', '-X', chain])
          }
        } else {
          await pod.exec('nft', ['delete', 'chain', 'inet', 'ambientkit', 'mangle-prerouting'])
        }
        expect((await inspectCapture(ns)).status).toBe('drifted')
        await applyCapture(ns, {}, { backend })
        // 'present' also means exactly one jump into each of our chains.
        expect(await inspectCapture(ns)).toEqual({ status: 'present', backends: [backend], differences: [] })
      })

      it('removing restores a fresh namespace exactly, and is idempotent', async () => {
        const fresh = await network.addPod(node)
        const ns = open(fresh)
        const before = await snapshot(fresh)
        await applyCapture(ns, { captureDns: true }, { backend })
        expect(await snapshot(fresh)).not.toBe(before)
        expect(await removeCapture(ns)).toEqual({ removed: true })
        expect(await snapshot(fresh)).toBe(before)
        expect(await removeCapture(ns)).toEqual({ removed: false })
        expect(await inspectCapture(ns)).toEqual({ status: 'absent', backends: [], differences: [] })
      })

      it('removing leaves the namespace\'s own rules exactly as they were', async () => {
        const busy = await network.addPod(node)
        const ns = open(busy)
        await busy.exec('iptables', ['-t', 'nat', '-A', 'OUTPUT', '-d', '10.9.9.9/32', '-j', 'RETURN'])
        await busy.exec('iptables', ['-t', 'mangle', '-A', 'PREROUTING', '-p', 'udp', '-j', 'MARK', '--set-mark', '0x5'])
        await busy.exec('ip6tables', ['-A', 'INPUT', '-p', 'tcp', '--dport', '9999', '-j', 'DROP'])
        await busy.exec('nft', ['-f', '-'], { input: 'table inet user {\n\tchain out {\n\t\ttype filter hook output priority 0; policy accept;\n\t\ttcp dport 1234 counter\n\t}\n}\n' })
        await busy.exec('ip', ['rule', 'add', 'fwmark', '0x5', 'lookup', '200'])
        const before = await snapshot(busy)
        await applyCapture(ns, {}, { backend })
        expect((await inspectCapture(ns)).status).toBe('present')
        await removeCapture(ns)
        expect(await snapshot(busy)).toBe(before)
      })

      it('refuses a bad configuration without any kernel change', async () => {
        const before = await snapshot(client)
        const message = await expectCode(applyCapture(nsClient, { outboundPort: 0 }, { backend }), RedirectErrorCode.InvalidConfig)
        expect(message).toContain('outboundPort')
        await expectCode(applyCapture(nsClient, { excludeOutboundCidrs: ['10.0.0.0/33'] }, { backend }), RedirectErrorCode.InvalidConfig)
        expect(await snapshot(client)).toBe(before)
      })

      it('a pod with IPv6 disabled is refused before any change (was a bare EACCES, rules left behind), and captured with { ipv6: false }', async () => {
        const pod = await network.addPod(node)
        const ns = open(pod)
        await pod.exec('sysctl', ['-qw', ...['all', 'default', 'lo', 'eth0'].map((dev) => `net.ipv6.conf.${dev}.disable_ipv6=1`)])
        const before = await snapshot(pod)
        const message = await expectCode(applyCapture(ns, {}, { backend }), RedirectErrorCode.Ipv6Disabled)
        expect(message).toContain(pod.path)
        expect(message).toContain('IPv6 is disabled')
        expect(message).toContain('{ ipv6: false }')
        expect(await snapshot(pod)).toBe(before)
        expect(await inspectCapture(ns)).toEqual({ status: 'absent', backends: [], differences: [] })

        expect(await applyCapture(ns, { ipv6: false }, { backend })).toEqual({ backend })
        expect(await inspectCapture(ns, { config: { ipv6: false } })).toEqual({ status: 'present', backends: [backend], differences: [] })
        const proxy = await ns.listen({ port: OUTBOUND_PORT, mark: PROXY_MARK })
        try {
          const accepted = nextConnection(proxy)
          const appSocket = await ns.connect({ host: outside.ipv4, port: 443 })
          const proxied = await accepted
          expect(originalDestination(proxied)).toEqual({ address: outside.ipv4, port: 443, family: 4 })
          appSocket.destroy()
          proxied.destroy()
        } finally {
          await closeServer(proxy)
        }
        expect(await removeCapture(ns, { config: { ipv6: false } })).toEqual({ removed: true })
        expect(await snapshot(pod)).toBe(before)
      })
    })
  }

  it("'auto' picks nftables when nft works, and a missing program names its Debian package", async () => {
    const pod = await network.addPod(node)
    const ns = open(pod)
    const before = await snapshot(pod)
    await withEnv({ PATH: '/nonexistent', AMBIENTKIT_NFT: 'program' }, async () => {
      const message = await expectCode(applyCapture(ns, {}, { backend: 'nftables' }), RedirectErrorCode.ProgramMissing)
      expect(message).toContain('apt-get install nftables')
      const iptables = await expectCode(applyCapture(ns, {}, { backend: 'iptables' }), RedirectErrorCode.ProgramMissing)
      expect(iptables).toContain('apt-get install iptables')
    })
    expect(await snapshot(pod)).toBe(before)
    expect(await applyCapture(ns)).toEqual({ backend: 'nftables' })
    await removeCapture(ns)
    expect(await snapshot(pod)).toBe(before)
  })

  it('runs nft in process, not as a program, while every descriptor number past FD_SETSIZE is in use (libnftables would abort the process)', async () => {
    const pod = await network.addPod(node)
    const ns = open(pod)
    const held: number[] = []
    try {
      // Every number up to past 1,024 in use: a libnftables context sharing this process's table would get one above FD_SETSIZE.
      for (let i = 0; i < 2048 && (held.at(-1) ?? 0) < 1030; i++) held.push(openSync('/dev/null', 'r'))
      expect(held.at(-1)).toBeGreaterThanOrEqual(1030)
      // No nft program to fall back on: the runs must happen in process.
      await withEnv({ PATH: '/nonexistent' }, async () => {
        expect(await applyCapture(ns, {}, { backend: 'nftables' })).toEqual({ backend: 'nftables' })
        expect(await inspectCapture(ns)).toEqual({ status: 'present', backends: ['nftables'], differences: [] })
        expect(await removeCapture(ns)).toEqual({ removed: true })
      })
    } finally {
      for (const fd of held) closeSync(fd)
    }
  })

  it('nftables needs no program when libnftables is installed', async () => {
    const pod = await network.addPod(node)
    const ns = open(pod)
    const before = await snapshot(pod)
    await withEnv({ PATH: '/nonexistent' }, async () => {
      expect(await applyCapture(ns, {}, { backend: 'nftables' })).toEqual({ backend: 'nftables' })
      expect(await inspectCapture(ns)).toEqual({ status: 'present', backends: ['nftables'], differences: [] })
      expect(await removeCapture(ns)).toEqual({ removed: true })
    })
    expect(await snapshot(pod)).toBe(before)
  })
})
