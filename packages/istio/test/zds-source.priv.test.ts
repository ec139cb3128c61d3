import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createWorkloadRegistry, type PodSourceEvent } from '@ambientkit/core'
import { openNetns } from '@ambientkit/redirect'
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest'
import { createTestNetwork, type TestNamespace, type TestNetwork } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { createZdsPodSource, type ZdsPodSource } from '../src/index'
import { generatePythonModules, pythonPeerSkipReason, startPython, type PythonPeer } from './support/python'

const openFds = (): number => readdirSync('/proc/self/fd').length

/** A consumer standing in for the node agent: records events, acknowledges when told. */
function consumer(source: ZdsPodSource, options: { fail?: (event: PodSourceEvent) => Error | undefined; delayMs?: number } = {}) {
  const events: Array<PodSourceEvent & { netnsId?: string }> = []
  const log: string[] = []
  const waiters: Array<() => void> = []
  source.subscribe((event) => {
    let netnsId: string | undefined
    if (event.type === 'upsert') {
      // The path opens the pod's namespace, as the agent will open it.
      const handle = openNetns(event.pod.netnsPath)
      netnsId = handle.id
      void handle.close()
    }
    events.push({ ...event, ...(netnsId ? { netnsId } : {}) })
    for (const w of waiters.splice(0)) w()
    setTimeout(() => {
      log.push(`ack ${event.type} ${event.type === 'upsert' ? event.pod.workload.name : event.uid}`)
      event.ack?.(options.fail?.(event))
    }, options.delayMs ?? 0)
  })
  return {
    events,
    log,
    async next(): Promise<PodSourceEvent & { netnsId?: string }> {
      while (events.length === 0) await new Promise<void>((resolve) => waiters.push(resolve))
      return events.shift()!
    },
  }
}

describePrivileged('ZDS pod source against a fake istio-cni (Python send_fds, real netns descriptors)', ['ip', 'protoc'], () => {
  const skip = pythonPeerSkipReason()
  let network: TestNetwork
  let pods: TestNamespace[]
  let modules: string
  let dir: string
  let cni: PythonPeer
  let source: ZdsPodSource | undefined
  let socketPath: string
  let count = 0

  beforeAll(async () => {
    if (skip !== undefined) throw new Error(skip)
    network = createTestNetwork('ak-zds')
    pods = [await network.addNamespace('a'), await network.addNamespace('b'), await network.addNamespace('c')]
    modules = generatePythonModules()
    dir = mkdtempSync(join(tmpdir(), 'ak-zds-'))
  })
  afterAll(async () => {
    await network?.cleanup()
    rmSync(modules, { recursive: true, force: true })
    rmSync(dir, { recursive: true, force: true })
  })
  afterEach(async () => {
    await source?.close()
    source = undefined
    await cni?.stop()
  })

  async function start(options: Partial<Parameters<typeof createZdsPodSource>[0]> = {}): Promise<ZdsPodSource> {
    socketPath = join(dir, `ztunnel-${++count}.sock`)
    cni = startPython('zds_server.py', [modules, socketPath])
    await cni.next() // {"listening": path}
    return (source = createZdsPodSource({ nodeName: 'node-1', path: socketPath, backoff: { initialMs: 5, maxMs: 50 }, retryIntervalMs: 100, ...options }))
  }

  const send = async (command: Record<string, unknown>): Promise<Record<string, unknown>> => {
    cni.child.stdin!.write(`${JSON.stringify(command)}\n`)
    return cni.next()
  }
  const add = (uid: string, pod: TestNamespace, name: string, extra: Record<string, unknown> = {}) =>
    send({ op: 'add', uid, name, namespace: 'shop', serviceAccount: `sa-${name}`, fds: [pod.path], ...extra })

  it('says hello first, enrolls the snapshot with acks after the proxy is up, reconciles, and never speaks unasked', async () => {
    const registry = createWorkloadRegistry()
    registry.upsertWorkload({ uid: 'Kubernetes//Pod/shop/a', name: 'a', namespace: 'shop', serviceAccount: 'sa-a', node: 'node-1', addresses: ['10.200.1.2'], protocol: 'HBONE', labels: {} })
    // A node proxy's register, as NodeProxy.register takes components.
    const components = new Map<string, { notReady?(): string | undefined; configDump?(): unknown }>()
    const nodeProxy = { register: (c: { name: string; notReady?(): string | undefined; configDump?(): unknown }) => (components.set(c.name, c), () => components.delete(c.name)) }
    const zds = await start({ registry, nodeProxy })
    expect(components.get('zds')!.notReady!()).toMatch(/^not connected to istio-cni at .*ztunnel-\d+\.sock/)
    const before = openFds()
    const agent = consumer(zds, { delayMs: 50 })
    expect(await send({ op: 'accept' })).toEqual({ connected: 1, hello: '0801' })
    expect(zds.ready()).toBe(false)
    expect(components.get('zds')!.notReady!()).toBe("waiting for istio-cni's snapshot (SnapshotSent)")

    expect(await add('uid-a', pods[0]!, 'a')).toEqual({ ack: '', raw: '0a00' })
    agent.log.push('reply a')
    const a = await agent.next()
    expect(a).toMatchObject({ type: 'upsert', pod: { capture: 'external', workload: { uid: 'Kubernetes//Pod/shop/a', addresses: ['10.200.1.2'] } } })
    expect(a.netnsId).toBe(openNetnsId(pods[0]!))
    // The ack went out only after the consumer acknowledged.
    expect(agent.log).toEqual(['ack upsert a', 'reply a'])
    expect(await add('uid-b', pods[1]!, 'b')).toEqual({ ack: '', raw: '0a00' })
    // istiod has not described b yet: its workload comes from what istio-cni said.
    expect(await agent.next()).toMatchObject({ type: 'upsert', pod: { workload: { uid: 'Kubernetes//Pod/shop/b', serviceAccount: 'sa-b', node: 'node-1', addresses: [] } } })
    expect(await send({ op: 'keep', uid: 'uid-unknown' })).toMatchObject({ ack: '' })
    expect(await send({ op: 'snapshot' })).toMatchObject({ ack: '' })
    expect(zds.ready()).toBe(true)
    expect(components.get('zds')!.notReady!()).toBeUndefined()
    expect(components.get('zds')!.configDump!()).toMatchObject({ snapshotReceived: true, pods: [{ uid: 'uid-a' }, { uid: 'uid-b' }] })
    expect(await send({ op: 'silence', ms: 200 })).toEqual({ silent: true, data: null })
    expect((await zds.list()).map((p) => p.workload.name).sort()).toEqual(['a', 'b'])

    // istiod describes b: its proxy gets the workload.
    registry.upsertWorkload({ uid: 'Kubernetes//Pod/shop/b', name: 'b', namespace: 'shop', serviceAccount: 'sa-b', node: 'node-1', addresses: ['10.200.1.3'], protocol: 'HBONE', labels: {} })
    expect(await agent.next()).toMatchObject({ type: 'upsert', pod: { workload: { uid: 'Kubernetes//Pod/shop/b', addresses: ['10.200.1.3'] } } })

    // istio-cni restarts: a new connection, a snapshot with a (same netns) and without b.
    expect(await send({ op: 'close' })).toEqual({ closed: true })
    expect(await send({ op: 'accept' })).toEqual({ connected: 2, hello: '0801' })
    expect(zds.ready()).toBe(false)
    expect(await add('uid-a', pods[0]!, 'a')).toMatchObject({ ack: '' })
    expect(await add('uid-c', pods[2]!, 'c')).toMatchObject({ ack: '' })
    expect(await agent.next()).toMatchObject({ type: 'upsert', pod: { workload: { name: 'c' } } })
    expect(await send({ op: 'del', uid: 'uid-c' })).toMatchObject({ ack: '' }) // before SnapshotSent: only leaves the snapshot
    expect(agent.events).toEqual([])
    expect(await send({ op: 'snapshot' })).toMatchObject({ ack: '' })
    const released = [await agent.next(), await agent.next()].map((e) => (e.type === 'remove' ? e.uid : e.type)).sort()
    expect(released).toEqual(['Kubernetes//Pod/shop/b', 'Kubernetes//Pod/shop/c'])
    expect(zds.configDump().pods.map((p) => p.uid)).toEqual(['uid-a'])

    // After the snapshot a DelWorkload releases at once.
    expect(await send({ op: 'del', uid: 'uid-a' })).toMatchObject({ ack: '' })
    expect(await agent.next()).toMatchObject({ type: 'remove', uid: 'Kubernetes//Pod/shop/a' })
    expect(await zds.list()).toEqual([])
    await zds.close()
    source = undefined
    expect(components.has('zds')).toBe(false)
    expect(openFds()).toBe(before)
  })

  it.each<[string, Record<string, unknown>, RegExp]>([
    ['an AddWorkload without a descriptor', { op: 'add', uid: 'u1', name: 'a', namespace: 'shop', serviceAccount: 'sa', fds: [] }, /^No control message$/],
    ['an AddWorkload with two descriptors', { op: 'add', uid: 'u1', name: 'a', namespace: 'shop', serviceAccount: 'sa', fds: ['$a', '$b'] }, /^Expected 1 FD$/],
    ['a DelWorkload with a descriptor', { op: 'del', uid: 'u1', fds: ['$a'] }, /^Unexpected control message$/],
    ['a SnapshotSent with a descriptor', { op: 'snapshot', fds: ['$a'] }, /^Unexpected control message$/],
    ['an AddWorkload without workload_info', { op: 'add', uid: 'u1', fds: ['$a'] }, /without workload_info/],
    ['a 1025-byte message', { op: 'raw', hex: '61'.repeat(1025), fds: ['$a'] }, /truncated/],
    ['bytes that are no protobuf', { op: 'raw', hex: 'ffffffff' }, /cannot decode/],
    ['a message with no known payload', { op: 'raw', hex: '2200' }, /no known payload/],
  ])('answers %s with an error Ack, closes its descriptors and reconnects', async (_name, command, reason) => {
    const zds = await start()
    const before = openFds()
    consumer(zds)
    await send({ op: 'accept' })
    const fds = ((command.fds as string[] | undefined) ?? []).map((f) => (f === '$a' ? pods[0]!.path : pods[1]!.path))
    const reply = await send({ ...command, fds })
    expect(reply.ack).toMatch(reason)
    expect(await send({ op: 'accept' })).toEqual({ connected: 2, hello: '0801' })
    await zds.close()
    source = undefined
    expect(openFds()).toBe(before)
  })

  it('refuses a second SnapshotSent and a KeepWorkload after the snapshot, reconnecting each time', async () => {
    const zds = await start()
    consumer(zds)
    await send({ op: 'accept' })
    expect(await send({ op: 'snapshot' })).toMatchObject({ ack: '' })
    expect(await send({ op: 'snapshot' })).toMatchObject({ ack: 'a second SnapshotSent' })
    expect(await send({ op: 'accept' })).toMatchObject({ connected: 2 })
    expect(await send({ op: 'snapshot' })).toMatchObject({ ack: '' })
    expect(await send({ op: 'keep', uid: 'late' })).toMatchObject({ ack: 'KeepWorkload late after SnapshotSent' })
    expect(await send({ op: 'accept' })).toMatchObject({ connected: 3 })
  })

  it('answers a failed proxy start with an error, keeps the connection, retries, and is ready once it runs', async () => {
    let failures = 1
    const zds = await start()
    const agent = consumer(zds, { fail: (e) => (e.type === 'upsert' && failures-- > 0 ? new Error('listeners would not bind') : undefined) })
    await send({ op: 'accept' })
    expect(await add('uid-a', pods[0]!, 'a')).toMatchObject({ ack: 'failure to start proxy: listeners would not bind' })
    expect(await send({ op: 'snapshot' })).toMatchObject({ ack: '' })
    expect(zds.ready()).toBe(false)
    expect(zds.configDump().pods).toMatchObject([{ uid: 'uid-a', state: 'failed', error: 'listeners would not bind' }])
    await agent.next()
    await agent.next() // the retry
    await expect.poll(() => zds.ready()).toBe(true)
    // Not a network namespace: refused alone, the connection stays.
    expect(await send({ op: 'add', uid: 'uid-x', name: 'x', namespace: 'shop', serviceAccount: 'sa', fds: ['/dev/null'] })).toMatchObject({ ack: expect.stringMatching(/^failure to start proxy: the descriptor is not a usable network namespace/) })
    expect(await send({ op: 'silence', ms: 100 })).toEqual({ silent: true, data: null })
    expect(zds.configDump().connections).toBe(1)
  })

  it('holds at most maxPods pods, answering the next AddWorkload with an error', async () => {
    const zds = await start({ maxPods: 1 })
    const before = openFds()
    consumer(zds)
    await send({ op: 'accept' })
    expect(await add('uid-a', pods[0]!, 'a')).toMatchObject({ ack: '' })
    expect(await add('uid-b', pods[1]!, 'b')).toMatchObject({ ack: 'failure to start proxy: this node proxy holds its limit of 1 pods' })
    expect(zds.configDump().pods.map((p) => p.uid)).toEqual(['uid-a'])
    await zds.close()
    source = undefined
    expect(openFds()).toBe(before)
  })
})

function openNetnsId(ns: TestNamespace): string {
  const handle = openNetns(ns.path)
  const id = handle.id
  void handle.close()
  return id
}
