import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { PodEnrollment } from '@ambientkit/core'
import { createNodeAgent, type NodeAgent } from '@ambientkit/agent'
import { inspectCapture, openNetns } from '@ambientkit/redirect'
import { createTestNetwork, type TestNetwork, type TestPod } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { mountFullDisk } from '../../../test/support/disk'
import { createListPodSource, httpGet } from './support/agent-test'
import { exchange, startEchoApp, tryExchange, waitFor } from '../../proxy/test/support/apps'
import { createTestControlPlane, meshWorkload, type TestControlPlane } from '../../proxy/test/support/mesh'

describePrivileged('node agent: enrollment lifecycle on real namespaces', ['ip', 'nft'], () => {
  let network: TestNetwork
  let cp: TestControlPlane
  let pods: TestPod[]
  let enrollments: PodEnrollment[]
  let stateDir: string
  let nodePath: string

  beforeAll(async () => {
    network = createTestNetwork('ak-agent')
    cp = await createTestControlPlane()
    stateDir = mkdtempSync(join(tmpdir(), 'ak-agent-'))
    const node = await network.addNode()
    nodePath = node.path
    pods = [await network.addPod(node), await network.addPod(node), await network.addPod(node)]
    enrollments = pods.map((pod, i) => ({ workload: meshWorkload(pod, { name: `app-${i}`, namespace: 'shop', serviceAccount: `sa-${i}` }), netnsPath: pod.path }))
    for (const e of enrollments) cp.registry.upsertWorkload(e.workload)
  })
  afterAll(async () => {
    await cp?.close()
    await network?.cleanup()
    rmSync(stateDir, { recursive: true, force: true })
  })

  const captureStatus = async (pod: TestPod): Promise<string> => {
    const netns = openNetns(pod.path)
    try {
      return (await inspectCapture(netns)).status
    } finally {
      await netns.close()
    }
  }

  it('enrolls listed pods, follows events, and reconciles after a restart', async () => {
    const stateFile = join(stateDir, 'agent.json')
    const source = createListPodSource([enrollments[0]!, enrollments[1]!])
    const { proxy } = cp.nodeProxy('node-1')
    await proxy.start()
    const admin = proxy.adminAddress()!.port
    let agent: NodeAgent = createNodeAgent({ nodeProxy: proxy, podSource: source, stateFile, backend: 'nftables', probes: { netns: nodePath } })
    const report = await agent.start()
    expect(report.failed).toEqual([])
    expect([...report.enrolled].sort()).toEqual([enrollments[0]!.workload.uid, enrollments[1]!.workload.uid].sort())
    expect(await captureStatus(pods[0]!)).toBe('present')
    expect(await captureStatus(pods[2]!)).toBe('absent')
    expect(await httpGet(admin, '/healthz/ready')).toEqual({ status: 200, body: 'ready\n' })
    // Enrolling again in the same netns keeps the running proxy: no second set of listeners.
    const sameNetns = openNetns(pods[0]!.path)
    try {
      const running = await proxy.addWorkload(enrollments[0]!.workload, sameNetns)
      expect(await proxy.addWorkload(enrollments[0]!.workload, sameNetns)).toBe(running)
      expect(proxy.configDump().workloads.filter((w) => w.uid === enrollments[0]!.workload.uid)).toHaveLength(1)
    } finally {
      await sameNetns.close()
    }
    expect(JSON.parse(readFileSync(stateFile, 'utf8')).pods).toEqual({ [enrollments[0]!.workload.uid]: pods[0]!.path, [enrollments[1]!.workload.uid]: pods[1]!.path })

    // Traffic between two enrolled pods goes through the mesh.
    const appNetns = openNetns(pods[1]!.path)
    const app = await startEchoApp(appNetns, 8080)
    const client = openNetns(pods[0]!.path)
    try {
      expect(await exchange(await client.connect({ host: pods[1]!.ipv4, port: 8080 }), 'enrolled')).toEqual({ response: 'enrolled', ended: true })
      const metrics = await httpGet(admin, '/metrics')
      expect(metrics.body).toMatch(/istio_tcp_connections_opened_total\{reporter="source",source_workload="app-0".*destination_workload="app-1".*connection_security_policy="mutual_tls"\} 1/)
      const dump = JSON.parse((await httpGet(admin, '/config_dump')).body)
      expect(dump.workloads.map((w: { name: string; state: string }) => `${w.name}:${w.state}`).sort()).toEqual(['app-0:ready', 'app-1:ready'])

      // Events: pod 2 joins, pod 1 leaves (and the registry says so, as a control plane would).
      cp.registry.upsertWorkload({ ...enrollments[1]!.workload, protocol: 'TCP' })
      source.set([enrollments[0]!, enrollments[2]!])
      await waitForEnrolled(agent, [enrollments[0]!, enrollments[2]!])
      expect(await captureStatus(pods[1]!)).toBe('absent')
      expect(await captureStatus(pods[2]!)).toBe('present')
      // pod 1 left the mesh: pod 0's proxy passes traffic to it through as plain TCP.
      expect(await exchange(await client.connect({ host: pods[1]!.ipv4, port: 8080 }), 'direct')).toEqual({ response: 'direct', ended: true })

      // The agent goes away (pods stay captured: fail closed) and pod 2 leaves meanwhile.
      await proxy.close()
      await agent.close()
      expect(await captureStatus(pods[2]!)).toBe('present')
      // pod 0 is still captured and its proxy is gone: its traffic fails, it never bypasses.
      expect((await tryExchange(client.connect({ host: pods[1]!.ipv4, port: 8080 }), 'down')).response).toBe('')
      source.set([enrollments[0]!])
      const restarted = cp.nodeProxy('node-1-restarted')
      agent = createNodeAgent({ nodeProxy: restarted.proxy, podSource: source, stateFile, backend: 'nftables', probes: { netns: nodePath } })
      const again = await agent.start()
      expect(again.enrolled).toEqual([enrollments[0]!.workload.uid])
      expect(again.removed).toEqual([enrollments[2]!.workload.uid])
      expect(await captureStatus(pods[2]!)).toBe('absent')
      expect(await exchange(await client.connect({ host: pods[1]!.ipv4, port: 8080 }), 'back')).toEqual({ response: 'back', ended: true })

      await agent.release()
      expect(await captureStatus(pods[0]!)).toBe('absent')
      expect(JSON.parse(readFileSync(stateFile, 'utf8')).pods).toEqual({})
    } finally {
      app.close()
      await appNetns.close()
      await client.close()
    }
  })

  it('holds the probe rewrite on the node only while it has pods: none leaves no table behind', async () => {
    const node = openNetns(nodePath)
    const probeTable = async (): Promise<boolean> => (await node.nft('list tables')).includes('table inet ambientkit-probes')
    const source = createListPodSource([])
    const { proxy } = cp.nodeProxy('node-probes')
    const agent = createNodeAgent({ nodeProxy: proxy, podSource: source, stateFile: join(stateDir, 'probes.json'), backend: 'nftables', probes: { netns: nodePath } })
    try {
      await agent.start()
      expect(await probeTable()).toBe(false)
      source.set([enrollments[2]!])
      await agent.reconcile()
      expect(await probeTable()).toBe(true)
      source.set([])
      await agent.reconcile()
      expect(await probeTable()).toBe(false)
    } finally {
      await agent.release()
      await proxy.close()
      await node.close()
    }
  })

  it('starts and enrolls with its state directory full, then read-only, and says so (issue 15)', async () => {
    const disk = mountFullDisk()
    const source = createListPodSource([enrollments[2]!])
    const { proxy, identities } = cp.nodeProxy('node-full')
    await proxy.start()
    const admin = proxy.adminAddress()!.port
    const options = { nodeProxy: proxy, podSource: source, stateFile: join(disk.dir, 'agent.json'), backend: 'nftables' as const, probes: false as const }
    try {
      // Full: files can be created (the Workload API's socket) but not written (the state file).
      let agent = createNodeAgent({ ...options, workloadApi: { socketPath: join(disk.dir, 'workload-api.sock'), identities } })
      expect((await agent.start()).enrolled).toEqual([enrollments[2]!.workload.uid])
      expect(await captureStatus(pods[2]!)).toBe('present')
      expect(agent.state()).toMatchObject({ reconciled: true, enrolled: 1, stateWriteFailures: 1 })
      expect(await httpGet(admin, '/healthz/ready')).toEqual({ status: 200, body: 'ready\n' })
      expect(JSON.parse((await httpGet(admin, '/config_dump')).body).components['node-agent']).toMatchObject({ ready: true, state: { stateWriteFailures: 1 } })
      expect((await httpGet(admin, '/metrics')).body).toMatch(/ambientkit_write_failures_total\{file="state"\} 1/)
      await agent.close()

      // Read-only: not even the Workload API's socket. The pods are still enrolled; readiness says what is missing.
      disk.readOnly()
      agent = createNodeAgent({ ...options, workloadApi: { socketPath: join(disk.dir, 'workload-api-2.sock'), identities } })
      expect((await agent.start()).enrolled).toEqual([enrollments[2]!.workload.uid])
      expect(agent.state().stateWriteFailures).toBe(1)
      const ready = await httpGet(admin, '/healthz/ready')
      expect(ready.status).toBe(503)
      expect(ready.body).toMatch(/node-agent \(Workload API not served: .*EROFS/)
      await agent.release()
      expect(await captureStatus(pods[2]!)).toBe('absent')
    } finally {
      await proxy.close()
      disk.cleanup()
    }
  })

  it('reports a workload whose listeners cannot open as not ready', async () => {
    const { proxy } = cp.nodeProxy('node-busy')
    await proxy.start()
    const netns = openNetns(pods[2]!.path)
    // Something else already holds 15001 in the pod.
    const squatter = await netns.listen({ host: '::', port: 15001, ipv6Only: false })
    try {
      await expect(proxy.addWorkload(enrollments[2]!.workload, netns)).rejects.toMatchObject({ code: 'ERR_AMBIENT_REDIRECT_SOCKET' })
      const ready = await httpGet(proxy.adminAddress()!.port, '/healthz/ready')
      expect(ready.status).toBe(503)
      expect(ready.body).toMatch(/not ready: shop\/app-2 \(failed\)/)
    } finally {
      squatter.close()
      await proxy.close()
      await netns.close()
    }
  })
})

function waitForEnrolled(agent: NodeAgent, wanted: PodEnrollment[]): Promise<void> {
  const expected = wanted.map((p) => p.workload.uid).sort().join(',')
  return waitFor(() => agent.enrolled().sort().join(',') === expected)
}
