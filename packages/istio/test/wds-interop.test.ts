import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createWdsClient, type WdsEvent } from '../src/index'
import { generatePythonModules, pythonPeerSkipReason, startPython } from './support/python'
import { makeTestPki } from './support/tls'

const skip = pythonPeerSkipReason()
if (skip !== undefined) console.warn(`skipping the Python xDS interop test: ${skip}`)

describe.skipIf(skip !== undefined)('WDS client against Python grpcio as istiod', () => {
  let dir: string
  let modules: string
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ambientkit-wds-py-'))
    modules = generatePythonModules()
  })
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true })
    rmSync(modules, { recursive: true, force: true })
  })

  it('ACKs, NACKs by name, follows removals and reconnects with its versions after "transport is closing"', async () => {
    const pki = makeTestPki()
    writeFileSync(join(dir, 'key.pem'), pki.serverKeyPem)
    writeFileSync(join(dir, 'cert.pem'), pki.serverCertPem)
    writeFileSync(join(dir, 'token'), 'py-token')
    const server = startPython('xds_server.py', [modules, join(dir, 'key.pem'), join(dir, 'cert.pem')])
    const registry = createWorkloadRegistry()
    const policies = createPolicyStore()
    const { listening } = (await server.next()) as { listening: number }
    const client = createWdsClient({
      address: `https://localhost:${listening}`,
      rootCert: pki.caPem,
      token: { file: join(dir, 'token') },
      node: { ip: '10.0.0.9', podName: 'ztunnel-py', podNamespace: 'istio-system' },
      registry,
      policies,
    })
    const events: WdsEvent[] = []
    client.subscribe((e) => events.push(e))
    try {
      const started = client.start()
      expect(await server.next()).toEqual({ stream: 1, authorization: 'Bearer py-token', clusterid: 'Kubernetes' })
      const first = [(await server.next()).request, (await server.next()).request] as Array<Record<string, unknown>>
      expect(first.map((r) => r.typeUrl)).toEqual(['type.googleapis.com/istio.workload.Address', 'type.googleapis.com/istio.security.Authorization'])
      expect(first[0]).toMatchObject({ subscribe: [], initialVersions: {}, nodeId: 'ztunnel~10.0.0.9~ztunnel-py.istio-system~istio-system.svc.cluster.local', nodeName: 'ztunnel-py' })
      const nack = (await server.next()).reply as Record<string, unknown>
      expect(nack).toMatchObject({ typeUrl: 'type.googleapis.com/istio.workload.Address', nonce: 'py-1', error: 'Kubernetes//Pod/shop/bad: addresses[0]: an address must be 4 or 16 bytes long, got 3' })
      expect(registry.resolve('10.96.0.10', 80)).toMatchObject({ address: '10.1.0.5', port: 8080 })
      expect((await server.next()).reply).toMatchObject({ nonce: 'py-2', error: null })
      expect(policies.list()).toMatchObject([{ name: 'deny-other', action: 'DENY', rules: [[[{ notNamespaces: ['shop'] }]]] }])
      expect(await server.next()).toMatchObject({ stream: 2 })
      const second = [(await server.next()).request, (await server.next()).request] as Array<Record<string, unknown>>
      expect(second[0]!.initialVersions).toEqual({ 'Kubernetes//Pod/shop/api': 'v1', 'shop/api.shop.svc.cluster.local': 'v1' })
      expect(second[1]!.initialVersions).toEqual({ 'shop/deny-other': '' })
      expect(events.find((e) => e.type === 'disconnected')).toMatchObject({ reason: 'Reconnect', retryInMs: 10 })
      expect((await server.next()).reply).toMatchObject({ nonce: 'py-3', error: null })
      expect(registry.workloadByAddress('10.1.0.5')).toBeUndefined()
      expect(registry.serviceByVip('10.96.0.10')!.endpoints).toEqual([])
      await started
      expect(client.ready()).toBe(true)
    } finally {
      await client.close()
      await server.stop()
    }
  })
})
