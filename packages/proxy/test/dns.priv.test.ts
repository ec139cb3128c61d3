import { closeSync } from 'node:fs'
import type { ChildProcess } from 'node:child_process'
import type { Socket as DgramSocket } from 'node:dgram'
import { once } from 'node:events'
import type { Server, Socket } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createWorkloadRegistry, DNS_PORT, type Workload } from '@ambientkit/core'
import { createDnsProxy, createProxyMetrics, type DnsProxy } from '@ambientkit/proxy'
import { applyCapture, openNetns, type Netns } from '@ambientkit/redirect'
import { createTestNetwork, type TestPod } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { dnsPacket } from '../src/dns/wire'
import { dig, startDnsmasq, stopProcess } from '../../../test/support/dns'
import { meshWorkload } from './support/mesh'

const query = (id: number, name: string, type: 'A' | 'AAAA' | 'TXT' = 'A'): Buffer =>
  dnsPacket.encode({ id, type: 'query', flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name, class: 'IN' }] })

/** A raw DNS client in `netns` talking to `host`:53, which capture hands to the proxy: it collects every datagram that comes back. */
async function rawClient(netns: Netns, host: string): Promise<{ socket: DgramSocket; next: () => Promise<Buffer> }> {
  const socket = await netns.bindUdp()
  const received: Buffer[] = []
  const waiters: Array<(message: Buffer) => void> = []
  socket.on('message', (message: Buffer) => {
    const waiter = waiters.shift()
    if (waiter !== undefined) waiter(message)
    else received.push(message)
  })
  socket.connect(53, host)
  await once(socket, 'connect')
  return { socket, next: () => (received.length > 0 ? Promise.resolve(received.shift()!) : new Promise((resolve) => waiters.push(resolve))) }
}

/** Sends framed messages over one TCP connection to `host`:53 (the proxy, by capture) and collects the framed answers until the proxy closes. */
async function tcpExchange(netns: Netns, host: string, bytes: Buffer, answers: number): Promise<Buffer[]> {
  const socket = await netns.connect({ host, port: 53 })
  const out: Buffer[] = []
  let pending = Buffer.alloc(0)
  return new Promise((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk])
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        out.push(pending.subarray(2, 2 + pending.readUInt16BE(0)))
        pending = pending.subarray(2 + pending.readUInt16BE(0))
      }
      if (out.length === answers) {
        socket.destroy()
        resolve(out)
      }
    })
    socket.on('error', reject)
    socket.on('close', () => resolve(out))
    socket.write(bytes)
  })
}

const framed = (...messages: Buffer[]): Buffer =>
  Buffer.concat(messages.flatMap((m) => [Buffer.from([m.length >> 8, m.length & 0xff]), m]))

describePrivileged('the DNS proxy of a captured pod, with dig and dnsmasq', ['ip', 'nft', 'dig', 'dnsmasq'], () => {
  const network = createTestNetwork('ak-dns')
  const registry = createWorkloadRegistry()
  const proxyMetrics = createProxyMetrics()
  const metrics = proxyMetrics.dns!
  /** The lines of one metric in the Prometheus text the proxy's metrics serve. */
  const metric = async (name: string): Promise<string> =>
    (await proxyMetrics.exposition!()).body
      .split('\n')
      .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
      .join('\n')
  const handles: Netns[] = []
  let client: TestPod
  let resolver: TestPod
  let quiet: TestPod
  let clientNs: Netns
  let quietNs: Netns
  let resolverNs: Netns
  let workload: Workload
  let dnsmasq: ChildProcess
  let proxy: DnsProxy

  beforeAll(async () => {
    const node = await network.addNode()
    client = await network.addPod(node)
    resolver = await network.addPod(node)
    quiet = await network.addPod(node)
    const open = (pod: TestPod): Netns => {
      const handle = openNetns(pod.path)
      handles.push(handle)
      return handle
    }
    clientNs = open(client)
    quietNs = open(quiet)
    resolverNs = open(resolver)
    registry.upsertService({ hostname: 'api.shop.svc.cluster.local', namespace: 'shop', vips: ['10.96.0.10', 'fd00:96::10'], ports: { 80: 8080 }, endpoints: [] })
    registry.upsertService({ hostname: 'api.example.com', namespace: 'shop', vips: ['240.240.0.1'], ports: { 443: 443 }, endpoints: [] })
    await applyCapture(clientNs, { captureDns: true }, { backend: 'nftables' })
    await applyCapture(quietNs, { captureDns: true }, { backend: 'nftables' })
    dnsmasq = await startDnsmasq(resolver)
    workload = meshWorkload(client, { name: 'app', namespace: 'shop', serviceAccount: 'app' })
    proxy = await createDnsProxy({ workload, netns: clientNs, registry, upstreams: [resolver.ipv4], metrics })
  })
  afterAll(async () => {
    await proxy?.close()
    await stopProcess(dnsmasq)
    for (const handle of handles) await handle.close()
    await network.cleanup()
  })

  it('listens on 127.0.0.1 and ::1 inside the pod, UDP and TCP, where capture sends DNS', async () => {
    expect(proxy.addresses.map((a) => `${a.address}:${a.port}`)).toEqual([`127.0.0.1:${DNS_PORT}`, `::1:${DNS_PORT}`])
    expect(proxy.upstreams).toEqual([{ address: resolver.ipv4, port: 53, family: 4 }])
    const { stdout } = await client.exec('ss', ['-Htuln', `sport = :${DNS_PORT}`])
    expect(stdout.trim().split('\n').map((line) => line.split(/\s+/)[0]).sort()).toEqual(['tcp', 'tcp', 'udp', 'udp'])
  })

  it("dig from the pod resolves a mesh service to its VIP, answered by the proxy (the resolver does not know the name)", async () => {
    const a = await dig(client, [`@${resolver.ipv4}`, 'api.shop.svc.cluster.local', 'A'])
    expect(a.answers).toEqual([['api.shop.svc.cluster.local.', '30', 'A', '10.96.0.10']])
    expect(a.output).toMatch(/flags: qr aa rd ra;/)
    const aaaa = await dig(client, [`@${resolver.ipv6}`, 'api.shop.svc.cluster.local', 'AAAA'])
    expect(aaaa.answers).toEqual([['api.shop.svc.cluster.local.', '30', 'AAAA', 'fd00:96::10']])
    expect((await dig(client, [`@${resolver.ipv4}`, 'api.shop', 'A'])).answers).toEqual([['api.shop.', '30', 'A', '10.96.0.10']])
    // A v4-only name asked for AAAA exists, with no record (NODATA), rather than NXDOMAIN.
    const nodata = await dig(client, [`@${resolver.ipv4}`, 'api.example.com', 'AAAA'])
    expect([nodata.status, nodata.answers]).toEqual(['NOERROR', []])
  })

  it('a name with a search domain appended gets a CNAME to the mesh name, then its VIP', async () => {
    const { answers } = await dig(client, [`@${resolver.ipv4}`, 'api.example.com.shop.svc.cluster.local', 'A'])
    expect(answers).toEqual([
      ['api.example.com.shop.svc.cluster.local.', '30', 'CNAME', 'api.example.com.'],
      ['api.example.com.', '30', 'A', '240.240.0.1'],
    ])
  })

  it("forwards other names to the resolver from inside the pod, keeping its TTLs, its EDNS and its NXDOMAIN", async () => {
    const outside = await dig(client, [`@${resolver.ipv4}`, 'outside.test', 'A'])
    expect(outside.answers).toEqual([['outside.test.', '77', 'A', '192.0.2.10']])
    // dnsmasq's OPT record (its UDP size, 1200) came through untouched.
    expect(outside.output).toMatch(/EDNS: version: 0, flags:; udp: 1200/)
    expect((await dig(client, [`@${resolver.ipv4}`, 'nothing.invalid', 'A'])).status).toBe('NXDOMAIN')
    // Not A or AAAA: forwarded even for a mesh name.
    expect((await dig(client, [`@${resolver.ipv4}`, 'api.shop.svc.cluster.local', 'TXT'])).status).toBe('NXDOMAIN')
  })

  it('a truncated UDP answer is asked again over TCP upstream; one too big for the client makes it retry over TCP', async () => {
    // The resolver truncates at 1200 bytes; the proxy fetches the whole answer over TCP and it fits the 4096 dig takes.
    const whole = await dig(client, [`@${resolver.ipv4}`, 'big.outside.test', 'TXT', '+bufsize=4096', '+ignore'])
    expect(whole.output).not.toMatch(/flags:[^;]* tc/)
    expect(whole.answers).toHaveLength(10)
    expect(Number(/MSG SIZE {2}rcvd: (\d+)/.exec(whole.output)?.[1])).toBeGreaterThan(1200)
    // Without EDNS dig takes 512 bytes: the proxy answers TC and dig asks again over TCP, which the proxy forwards over TCP.
    const retried = await dig(client, [`@${resolver.ipv4}`, 'big.outside.test', 'TXT', '+noedns'])
    expect(retried.output).toContain(';; Truncated, retrying in TCP mode.')
    expect(retried.answers).toHaveLength(10)
    expect((await dig(client, [`@${resolver.ipv4}`, 'api.shop.svc.cluster.local', '+tcp'])).answers).toEqual([['api.shop.svc.cluster.local.', '30', 'A', '10.96.0.10']])
  })

  it('malformed and oversized messages get FORMERR or are dropped, and the proxy keeps serving', async () => {
    const before = await metric('ambientkit_dns_dropped_total')
    const raw = await rawClient(clientNs, resolver.ipv4)
    const header = (id: number, flags: number, questions: number): Buffer => {
      const b = Buffer.alloc(12)
      b.writeUInt16BE(id, 0)
      b.writeUInt16BE(flags, 2)
      b.writeUInt16BE(questions, 4)
      return b
    }
    raw.socket.send(Buffer.from([1, 2, 3, 4, 5])) // shorter than a header: dropped
    raw.socket.send(header(0x1111, 0x8000, 0)) // a response: dropped
    raw.socket.send(Buffer.concat([header(0xbeef, 0x0100, 1), Buffer.from([0x3f, 0xff, 0xff])])) // a question that runs off the end
    raw.socket.send(Buffer.concat([header(0xcafe, 0x0100, 1), Buffer.alloc(5000, 1)])) // oversized
    raw.socket.send(query(0x0001, 'api.shop.svc.cluster.local'))
    const answers = [await raw.next(), await raw.next(), await raw.next()].map((m) => dnsPacket.decode(m))
    // Datagrams are answered in order: the two dropped ones left no answer before the others.
    expect(answers.map((a) => [a.id, a.type, (a as { rcode?: string }).rcode])).toEqual([
      [0xbeef, 'response', 'FORMERR'],
      [0xcafe, 'response', 'FORMERR'],
      [0x0001, 'response', 'NOERROR'],
    ])
    raw.socket.close()

    // Over TCP: a FORMERR and an answer on one connection; a connection that promises 65535 bytes and stops gets nothing and takes nothing down.
    const [formerr, answer] = await tcpExchange(clientNs, resolver.ipv4, framed(Buffer.concat([header(0xbad, 0x0100, 1), Buffer.from([0x3f])]), query(2, 'outside.test')), 2)
    expect([dnsPacket.decode(formerr!).id, (dnsPacket.decode(formerr!) as { rcode?: string }).rcode]).toEqual([0xbad, 'FORMERR'])
    expect(dnsPacket.decode(answer!).answers?.map((a) => (a as { data?: unknown }).data)).toEqual(['192.0.2.10'])
    const stuck = await clientNs.connect({ host: resolver.ipv4, port: 53 })
    stuck.write(Buffer.concat([Buffer.from([0xff, 0xff]), Buffer.alloc(100)]))
    expect((await dig(client, [`@${resolver.ipv4}`, 'outside.test', '+tcp'])).answers).toEqual([['outside.test.', '77', 'A', '192.0.2.10']])
    stuck.destroy()

    const after = await metric('ambientkit_dns_dropped_total')
    expect(before).not.toContain('reason="malformed"')
    expect(after).toContain('ambientkit_dns_dropped_total{reason="malformed",source_workload="app",source_workload_namespace="shop"} 2')
    expect(after).toContain('ambientkit_dns_dropped_total{reason="undecodable",source_workload="app",source_workload_namespace="shop"} 2')
    expect(after).toContain('ambientkit_dns_dropped_total{reason="oversized",source_workload="app",source_workload_namespace="shop"} 1')
  })

  it('counts requests and forwards like ztunnel', async () => {
    const text = (await proxyMetrics.exposition!()).body
    expect(text).toMatch(/istio_dns_requests_total\{request_query_type="a",request_protocol="udp",source_workload="app",source_workload_namespace="shop"\} \d+/)
    expect(text).toMatch(/istio_dns_upstream_requests_total\{request_query_type="txt",request_protocol="tcp",source_workload="app",source_workload_namespace="shop"\} \d+/)
    expect(text).toMatch(/istio_dns_upstream_request_duration_seconds_count\{request_query_type="a",request_protocol="udp"/)
  })

  describe('an upstream that does not answer', () => {
    let silentUdp: DgramSocket
    let silentTcp: Server
    let quietProxy: DnsProxy
    const heard: Buffer[] = []
    const accepted: Socket[] = []

    beforeAll(async () => {
      silentUdp = await resolverNs.bindUdp({ host: resolver.ipv4, port: 5353 })
      silentUdp.on('message', (m: Buffer) => heard.push(m))
      silentTcp = await resolverNs.listen({ host: resolver.ipv4, port: 5353 })
      silentTcp.on('connection', (socket: Socket) => accepted.push(socket))
      quietProxy = await createDnsProxy({
        workload: meshWorkload(quiet, { name: 'quiet', namespace: 'shop', serviceAccount: 'quiet' }),
        netns: quietNs,
        registry,
        upstreams: [`${resolver.ipv4}:5353`],
        timeout: 300,
        maxPendingQueries: 2,
        metrics,
      })
    })
    afterAll(async () => {
      await quietProxy?.close()
      silentUdp?.close()
      for (const socket of accepted) socket.destroy()
      silentTcp?.close()
    })

    it('gets the client a SERVFAIL in time, over UDP and TCP, never silence', async () => {
      const udp = await dig(quiet, [`@${resolver.ipv4}`, 'outside.test'])
      expect(udp.status).toBe('SERVFAIL')
      expect(heard.length).toBeGreaterThan(0)
      // The query left with a fresh ID, the client's comes back.
      expect(heard[0]!.readUInt16BE(0)).not.toBe(Number(/id: (\d+)/.exec(udp.output)?.[1]))
      expect((await dig(quiet, [`@${resolver.ipv4}`, 'outside.test', '+tcp'])).status).toBe('SERVFAIL')
      expect(accepted.length).toBeGreaterThan(0)
      // Mesh names need no upstream.
      expect((await dig(quiet, [`@${resolver.ipv4}`, 'api.shop.svc.cluster.local'])).answers).toHaveLength(1)
      expect(await metric('istio_dns_upstream_failures_total')).toMatch(/source_workload="quiet"[^\n]* [1-9]/)
    })

    it('answers SERVFAIL at once past maxPendingQueries', async () => {
      const raw = await rawClient(quietNs, resolver.ipv4)
      for (let id = 1; id <= 3; id++) raw.socket.send(query(id, `n${id}.outside.test`))
      // Two wait for the upstream (then time out); the third is refused at once, so it comes back first.
      const first = dnsPacket.decode(await raw.next())
      expect([first.id, (first as { rcode?: string }).rcode]).toEqual([3, 'SERVFAIL'])
      const later = [dnsPacket.decode(await raw.next()), dnsPacket.decode(await raw.next())]
      expect(later.map((m) => [m.id, (m as { rcode?: string }).rcode]).sort()).toEqual([[1, 'SERVFAIL'], [2, 'SERVFAIL']])
      raw.socket.close()
      expect(await metric('ambientkit_dns_dropped_total')).toContain('reason="overload",source_workload="quiet"')
    })
  })

  it("refuses a port another program holds, joins a DNS proxy's port (a new agent process), and closes leaving nothing listening", async () => {
    // Another program: a socket without SO_REUSEPORT.
    const squatter = clientNs.bindUdpFd({ host: '127.0.0.1', port: 15055 })
    try {
      await expect(createDnsProxy({ workload, netns: clientNs, registry, upstreams: [resolver.ipv4], port: 15055, ipv6: false })).rejects.toMatchObject({ code: 'ERR_AMBIENT_REDIRECT_SOCKET' })
    } finally {
      closeSync(squatter)
    }
    // An upgraded agent's DNS proxy starts next to the running one (SO_REUSEPORT), UDP and TCP.
    const next = await createDnsProxy({ workload, netns: clientNs, registry, upstreams: [resolver.ipv4] })
    await next.close()
    const extra = await createDnsProxy({ workload, netns: clientNs, registry, upstreams: [resolver.ipv4], port: 15054, ipv6: false })
    expect(extra.addresses.map((a) => a.address)).toEqual(['127.0.0.1'])
    expect(extra.stats()).toEqual({ pendingQueries: 0, tcpConnections: 0 })
    await extra.close()
    await extra.close()
    expect((await client.exec('ss', ['-Htuln', 'sport = :15054'])).stdout.trim()).toBe('')
  })
})
