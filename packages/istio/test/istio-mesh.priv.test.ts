import { mkdtempSync, rmSync } from 'node:fs'
import type { Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { createNodeAgent, type NodeAgent } from '@ambientkit/agent'
import { applyCapture, inspectCapture, openNetns, type Netns } from '@ambientkit/redirect'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createTestNetwork, type TestNetwork, type TestPod } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { closedWith, established, exchange, startEchoApp, tryExchange, waitFor } from '../../proxy/test/support/apps'
import { createTestControlPlane, type TestControlPlane } from '../../proxy/test/support/mesh'
import { createWdsClient, createZdsPodSource, type WdsClient, type ZdsPodSource } from '../src/index'
import { ADDRESS, AUTHORIZATION, startFakeIstiod, type FakeStream } from './support/fake-istiod'
import { generatePythonModules, pythonPeerSkipReason, startPython, type PythonPeer } from './support/python'
import { makeTestPki } from './support/tls'

function bytes(ip: string): Buffer {
  if (!ip.includes(':')) return Buffer.from(ip.split('.').map(Number))
  const [head = '', tail = ''] = ip.split('::')
  const h = head === '' ? [] : head.split(':')
  const t = tail === '' ? [] : tail.split(':')
  const groups = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t]
  const buffer = Buffer.alloc(16)
  groups.forEach((g, i) => buffer.writeUInt16BE(parseInt(g, 16), i * 2))
  return buffer
}

describePrivileged('an ambientkit node in an Istio mesh: pods from istio-cni (ZDS), config from istiod (WDS), traffic over HBONE', ['ip', 'nft', 'protoc'], () => {
  let network: TestNetwork
  let pods: TestPod[]
  let cp: TestControlPlane
  let istiod: Awaited<ReturnType<typeof startFakeIstiod>>
  let modules: string
  let dir: string
  const closers: Array<() => Promise<void> | void> = []

  beforeAll(async () => {
    const skip = pythonPeerSkipReason()
    if (skip !== undefined) throw new Error(skip)
    network = createTestNetwork('ak-istio')
    const node = await network.addNode()
    pods = [await network.addPod(node), await network.addPod(node), await network.addPod(node)]
    cp = await createTestControlPlane()
    const pki = makeTestPki()
    istiod = await startFakeIstiod({ key: pki.serverKeyPem, cert: pki.serverCertPem })
    ;(istiod as { caPem?: string }).caPem = pki.caPem
    modules = generatePythonModules()
    dir = mkdtempSync(join(tmpdir(), 'ak-istio-'))
  })
  afterAll(async () => {
    // Everything is released even when something fails to close; the first failure is reported after.
    const results = await Promise.allSettled([...closers.reverse(), () => cp?.close(), () => istiod?.close()].map(async (close) => close()))
    await network?.cleanup()
    if (modules) rmSync(modules, { recursive: true, force: true })
    if (dir) rmSync(dir, { recursive: true, force: true })
    const failed = results.find((r) => r.status === 'rejected')
    if (failed) throw failed.reason
  }, 60_000)

  const names = ['a', 'b', 'c']
  const uid = (name: string): string => `Kubernetes//Pod/shop/${name}`
  const workload = (i: number, policies: string[] = []) => ({
    name: uid(names[i]!),
    version: 'v1',
    workload: {
      uid: uid(names[i]!), name: names[i], namespace: 'shop', serviceAccount: names[i], node: 'node-1', tunnelProtocol: 1,
      addresses: [bytes(pods[i]!.ipv4), bytes(pods[i]!.ipv6)], authorizationPolicies: policies,
      ...(i === 1 ? { services: { 'shop/b.shop.svc.cluster.local': { ports: [{ servicePort: 80, targetPort: 8080 }] } } } : {}),
    },
  })
  const principal = (name: string) => ({ exact: `cluster.local/ns/shop/sa/${name}` })
  const policy = (name: string, action: number, from: string) => ({
    name: `shop/${name}`,
    authorization: { name, namespace: 'shop', scope: 2, action, rules: [{ clauses: [{ matches: [{ principals: [principal(from)] }] }] }] },
  })

  /** The access-log entry that matches, once written; fails showing the log when none comes within 5 s. */
  const logged = (match: Parameters<TestControlPlane['logged']>[0], from: number) =>
    Promise.race([
      cp.logged(match, from),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no such access-log entry; logged: ${JSON.stringify(cp.accessLog.slice(from))}`)), 5000)),
    ])

  it('enrolls three pods, allows and denies as istiod says, and rides out every restart', async () => {
    // istiod: three workloads, a service in front of b, and two workload-selected policies.
    const wds: WdsClient = createWdsClient({ address: `https://127.0.0.1:${istiod.port}`, rootCert: (istiod as { caPem?: string }).caPem!, token: false, registry: cp.registry, policies: cp.policies })
    closers.push(() => wds.close())
    const ready = wds.start()
    let stream: FakeStream = await istiod.streams()
    await stream.next()
    await stream.next()
    stream.push(ADDRESS, [
      workload(0),
      workload(1, ['shop/allow-a']),
      workload(2, ['shop/deny-a']),
      { name: 'shop/b.shop.svc.cluster.local', version: 'v1', service: { name: 'b', namespace: 'shop', hostname: 'b.shop.svc.cluster.local', addresses: [{ network: '', address: bytes('10.96.0.10') }], ports: [{ servicePort: 80, targetPort: 8080 }] } },
    ])
    expect((await stream.next()).errorDetail).toBeNull()
    stream.push(AUTHORIZATION, [policy('allow-a', 0, 'a'), policy('deny-a', 1, 'a')])
    expect((await stream.next()).errorDetail).toBeNull()
    await ready
    // A bad resource is refused alone; the good one beside it applies.
    stream.push(ADDRESS, [{ name: uid('broken'), version: 'v1', workload: { uid: uid('broken'), name: 'broken', namespace: 'shop', addresses: [Buffer.alloc(3)] } }, workload(0)])
    expect((await stream.next()).errorDetail?.message).toMatch(/^Kubernetes\/\/Pod\/shop\/broken: [^;]*$/)
    expect(cp.registry.workloadByUid(uid('a'))).toBeDefined()

    // istio-cni: capture applied to each pod (its job), then the pods handed over.
    for (const pod of pods) {
      const netns = openNetns(pod.path)
      await applyCapture(netns, {}, { backend: 'nftables' })
      await netns.close()
    }
    const path = join(dir, 'ztunnel.sock')
    const cni: PythonPeer = startPython('zds_server.py', [modules, path])
    closers.push(() => cni.stop())
    await cni.next()
    const send = async (command: Record<string, unknown>): Promise<Record<string, unknown>> => {
      cni.child.stdin!.write(`${JSON.stringify(command)}\n`)
      return cni.next()
    }
    const add = (i: number) => send({ op: 'add', uid: `pod-uid-${i}`, name: names[i], namespace: 'shop', serviceAccount: names[i], fds: [pods[i]!.path] })

    let node = cp.nodeProxy('node-1')
    await node.proxy.start()
    let zds: ZdsPodSource = createZdsPodSource({ nodeName: 'node-1', path, registry: cp.registry })
    let agent: NodeAgent = createNodeAgent({ nodeProxy: node.proxy, podSource: zds })
    await agent.start()
    expect(await send({ op: 'accept' })).toMatchObject({ hello: '0801' })
    for (const i of [0, 1, 2]) expect(await add(i)).toEqual({ ack: '', raw: '0a00' })
    expect(await send({ op: 'snapshot' })).toMatchObject({ ack: '' })
    expect(agent.enrolled().sort()).toEqual([uid('a'), uid('b'), uid('c')])
    expect(zds.ready()).toBe(true)

    const apps: Server[] = []
    const netns: Netns[] = pods.map((p) => openNetns(p.path))
    closers.push(async () => {
      for (const app of apps) app.close()
      for (const n of netns) await n.close()
    })
    apps.push(await startEchoApp(netns[1]!, 8080), await startEchoApp(netns[2]!, 8080))
    const [a, , c] = netns
    // a → b: allowed by allow-a (and through the service's VIP); c → b: no ALLOW matches; a → c: denied by deny-a.
    expect((await exchange(await a!.connect({ host: pods[1]!.ipv4, port: 8080 }), 'hi')).response).toBe('hi')
    expect((await exchange(await a!.connect({ host: '10.96.0.10', port: 80 }), 'vip')).response).toBe('vip')
    let from = cp.accessLog.length
    expect((await tryExchange(c!.connect({ host: pods[1]!.ipv4, port: 8080 }), 'no')).response).toBe('')
    expect(await logged((e) => e.listener === 'inbound-hbone' && e.outcome === 'denied', from)).toMatchObject({ source: { identity: 'spiffe://cluster.local/ns/shop/sa/c' }, destination: { workload: 'b' }, reason: expect.stringMatching(/no-allow-policy-matched/) })
    from = cp.accessLog.length
    expect((await tryExchange(a!.connect({ host: pods[2]!.ipv4, port: 8080 }), 'no')).response).toBe('')
    expect(await logged((e) => e.listener === 'inbound-hbone' && e.outcome === 'denied', from)).toMatchObject({ destination: { workload: 'c' }, policy: 'shop/deny-a' })

    // A connection a → b stays up across an istiod stream drop and reconnect.
    const kept = await a!.connect({ host: pods[1]!.ipv4, port: 8080 })
    await established(kept)
    const keptClosed = closedWith(kept)
    stream.end(grpc.status.UNAVAILABLE, 'transport is closing')
    stream = await istiod.streams()
    const [again] = [await stream.next(), await stream.next()]
    expect(again!.initialResourceVersions).toMatchObject({ [uid('a')]: 'v1', [uid('b')]: 'v1', 'shop/b.shop.svc.cluster.local': 'v1' })
    await established(kept, 'still')
    expect(cp.policies.list().map((p) => p.name).sort()).toEqual(['allow-a', 'deny-a'])

    // istiod now denies a → b: the established connection is closed.
    stream.push(AUTHORIZATION, [policy('allow-a', 1, 'a')])
    expect((await stream.next()).errorDetail).toBeNull()
    await keptClosed
    expect((await tryExchange(a!.connect({ host: pods[1]!.ipv4, port: 8080 }), 'no')).response).toBe('')
    stream.push(AUTHORIZATION, [policy('allow-a', 0, 'a')])
    await stream.next()

    // DelWorkload stops c's proxy.
    expect(await send({ op: 'del', uid: 'pod-uid-2' })).toMatchObject({ ack: '' })
    expect(agent.enrolled().sort()).toEqual([uid('a'), uid('b')])
    expect(node.proxy.workloads().map((w) => w.name).sort()).toEqual(['a', 'b'])
    // c's capture is istio-cni's: the agent left it in place.
    expect((await inspectCapture(netns[2]!)).status).toBe('present')

    // The node agent restarts: the next connection's snapshot re-enrolls a and b, and no pod is left unproxied.
    await agent.close()
    await node.proxy.close()
    await zds.close()
    node = cp.nodeProxy('node-1-restarted')
    await node.proxy.start()
    zds = createZdsPodSource({ nodeName: 'node-1', path, registry: cp.registry })
    agent = createNodeAgent({ nodeProxy: node.proxy, podSource: zds })
    closers.push(async () => {
      await agent.close()
      await zds.close()
    })
    await agent.start()
    expect(await send({ op: 'close' })).toEqual({ closed: true })
    expect(await send({ op: 'accept' })).toMatchObject({ connected: 2, hello: '0801' })
    for (const i of [0, 1]) expect(await add(i)).toMatchObject({ ack: '' })
    expect(await send({ op: 'snapshot' })).toMatchObject({ ack: '' })
    await waitFor(() => zds.ready())
    expect(agent.enrolled().sort()).toEqual([uid('a'), uid('b')])
    expect((await exchange(await a!.connect({ host: pods[1]!.ipv4, port: 8080 }), 'back')).response).toBe('back')
  })
})
