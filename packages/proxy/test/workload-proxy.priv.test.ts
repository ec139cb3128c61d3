import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, openSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import type { Server } from 'node:net'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { workloadIdentity } from '@ambientkit/core'
import { tlsClientOptions } from '@ambientkit/identity'
import { createHboneClient } from '@ambientkit/proxy'
import { PROXY_MARK, type Netns } from '@ambientkit/redirect'
import { createTestNetwork, type TestNetwork } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { startEchoApp } from './support/apps'
import { createTestControlPlane, meshPod, meshWorkload, type MeshPod, type TestControlPlane } from './support/mesh'
import { dataPaths, nativeAddonOrSkip } from './support/native'

const QUEUED_CONNECT_CLIENT = fileURLToPath(new URL('./support/queued-connect-client.mjs', import.meta.url))

describePrivileged('workload proxy: inbound HBONE without capture', ['ip'], () => {
  describe.each(dataPaths('workload proxy'))('%s data path', (dataPath) => {
    let network: TestNetwork
    let cp: TestControlPlane
    let a: MeshPod
    let b: MeshPod

    beforeAll(async () => {
      network = createTestNetwork('ak-wp')
      cp = await createTestControlPlane()
      const [n1, n2] = [await network.addNode(), await network.addNode()]
      const podA = await network.addPod(n1!)
      const podB = await network.addPod(n2!)
      a = meshPod(podA, meshWorkload(podA, { name: 'frontend', namespace: 'web', serviceAccount: 'frontend' }))
      b = meshPod(podB, meshWorkload(podB, { name: 'api', namespace: 'shop', serviceAccount: 'api' }))
    })
    afterAll(async () => {
      await cp?.close()
      await network?.cleanup()
    })

    it('serves an authorized CONNECT to the app and refuses other authorities', async () => {
      cp.registry.upsertWorkload(a.workload)
      cp.registry.upsertWorkload(b.workload)
      const node2 = cp.nodeProxy('node-2', { dataPath })
      await node2.proxy.addWorkload(b.workload, b.netns)
      const app = await startEchoApp(b.netns, 8080)
      const node1 = cp.nodeProxy('node-1', { dataPath })
      const client = createHboneClient({
        tls: (identity, { signal }) => tlsClientOptions({ manager: node1.identities, id: identity!, expectedPeers: () => true, alpnProtocols: ['h2'], signal }),
        socketFactory: (address, { signal }) => a.netns.connect({ host: address.address, port: address.port, mark: PROXY_MARK, signal }),
      })
      try {
        const tunnel = await client.connect(`${b.pod.ipv4}:8080`, {
          identity: workloadIdentity(a.workload),
          expectedIdentities: [workloadIdentity(b.workload)],
        })
        const chunks: Buffer[] = []
        tunnel.on('data', (c: Buffer) => chunks.push(c))
        const ended = new Promise((resolve) => tunnel.on('end', resolve))
        tunnel.end('hello through HBONE')
        await ended
        expect(Buffer.concat(chunks).toString()).toBe('hello through HBONE')
        await expect(
          client.connect(`${a.pod.ipv4}:8080`, { identity: workloadIdentity(a.workload), expectedIdentities: [workloadIdentity(b.workload)], via: `${b.pod.ipv4}:15008` }),
        ).rejects.toMatchObject({ code: 'ERR_AMBIENT_HBONE_STATUS', details: { status: 400 } })
      } finally {
        await client.close()
        app.close()
      }
    })
  })
})

describePrivileged('workload proxy: a listening socket the addon cannot take', ['ip', 'ss'], () => {
  it('fails the start and closes that descriptor, leaving nothing listening', async () => {
    const network = createTestNetwork('ak-wpa')
    const cp = await createTestControlPlane()
    const dir = mkdtempSync(join(tmpdir(), 'ak-wpa-'))
    try {
      const pod = await network.addPod(await network.addNode())
      const p = meshPod(pod, meshWorkload(pod, { name: 'frontend', namespace: 'web', serviceAccount: 'frontend' }))
      cp.registry.upsertWorkload(p.workload)
      // The outbound listener's descriptor is a regular file, which epoll (and so the acceptor) refuses.
      const file = join(dir, 'not-a-socket')
      writeFileSync(file, '')
      let handed: number | undefined
      const netns = new Proxy(p.netns, {
        get(target, key) {
          if (key === 'listenFd') return () => (handed = openSync(file, 'r'))
          const value: unknown = Reflect.get(target, key)
          return typeof value === 'function' ? value.bind(target) : value
        },
      }) satisfies Netns
      const node = cp.nodeProxy('node-1')
      await expect(node.proxy.addWorkload(p.workload, netns)).rejects.toThrow(/cannot accept on descriptor/)
      expect(handed).toBeTypeOf('number')
      // Closed: the number is free, or already another file's.
      const target = ((): string | undefined => {
        try {
          return readlinkSync(`/proc/self/fd/${handed}`)
        } catch {
          return undefined
        }
      })()
      expect(target).not.toBe(file)
      expect((await pod.exec('ss', ['-H', '-t', '-l', '-n'])).stdout.trim()).toBe('')
    } finally {
      await cp.close()
      await network.cleanup()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

// Only the native data path reads HTTP/2 off the JavaScript thread, so only
// there can a request wait, received, for JavaScript to decide it.
describePrivileged('workload proxy: drain on the native data path', ['ip', 'mkfifo'], () => {
  // Regression: an upgrade under load reset a CONNECT that the old agent's
  // session had received before its GOAWAY but whose request had not yet
  // reached JavaScript: with no connection record yet, the drain found
  // nothing to wait for and closed the session under it.
  it.skipIf(nativeAddonOrSkip('workload proxy drain') === undefined)('serves a CONNECT its session received before the GOAWAY, even while the request waits for JavaScript', async () => {
    const network = createTestNetwork('ak-wpd')
    const cp = await createTestControlPlane()
    const dir = mkdtempSync(join(tmpdir(), 'ak-wpd-'))
    let client: ChildProcess | undefined
    let app: Server | undefined
    try {
      const [n1, n2] = [await network.addNode(), await network.addNode()]
      const [podA, podB] = [await network.addPod(n1!), await network.addPod(n2!)]
      const a = meshPod(podA, meshWorkload(podA, { name: 'frontend', namespace: 'web', serviceAccount: 'frontend' }))
      const b = meshPod(podB, meshWorkload(podB, { name: 'api', namespace: 'shop', serviceAccount: 'api' }))
      cp.registry.upsertWorkload(b.workload)
      const node2 = cp.nodeProxy('node-2', { dataPath: 'native' })
      const proxy = await node2.proxy.addWorkload(b.workload, b.netns)
      app = await startEchoApp(b.netns, 8080)
      const svid = await node2.identities.get(workloadIdentity(a.workload))
      const material = join(dir, 'material.json')
      writeFileSync(material, JSON.stringify({ chain: svid.certificateChainPem, key: svid.privateKeyPem, roots: cp.ca.bundle.x509AuthoritiesPem() }))
      const [go, sent] = [join(dir, 'go'), join(dir, 'sent')]
      execFileSync('mkfifo', [go, sent])
      client = spawn('ip', ['netns', 'exec', a.pod.name, process.execPath, QUEUED_CONNECT_CLIENT, material, `${b.pod.ipv4}:15008`, `${b.pod.ipv4}:8080`, go, sent], { stdio: ['ignore', 'pipe', 'inherit'] })
      const lines = createInterface({ input: client.stdout! })[Symbol.asyncIterator]()
      expect((await lines.next()).value).toBe('connected')
      // This thread blocks from here until the client's CONNECT reached the
      // server (its PING, sent after it, was answered), so the request is
      // still queued for JavaScript when the drain starts.
      execFileSync('sh', ['-c', 'echo go > "$1" && cat "$2"', 'sh', go, sent], { timeout: 10_000 })
      const drained = proxy.drain({ deadline: 5000 })
      const result = JSON.parse((await lines.next()).value as string) as unknown
      await drained
      expect(result).toEqual({ status: 200, body: 'hello' })
    } finally {
      client?.kill()
      app?.close()
      rmSync(dir, { recursive: true, force: true })
      await cp.close()
      await network.cleanup()
    }
  })
})
