import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import type { Readable } from 'node:stream'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { statSync } from 'node:fs'
import { SpiffeId } from '@ambientkit/identity'
import { createIstioCaSource } from '@ambientkit/ca'
import { callControlPlane, createNodeIdentitySource, watchControlPlane } from '../src/client'
import type { MeshState } from '../src/control-plane'
import { EXAMPLE_DIR, ROOT_DIR, controlPlaneId, state } from '../src/paths'

const dir = mkdtempSync(join(tmpdir(), 'akm-cp-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const meshYaml = join(dir, 'mesh.yaml')
writeFileSync(
  meshYaml,
  `nodes: [{ name: node-1, podCidr: 10.44.1.0/24 }, { name: node-2, podCidr: 10.44.2.0/24 }]
pods:
  - { name: api, namespace: shop, serviceAccount: api, node: node-1, ip: 10.44.1.2 }
  - { name: db, namespace: shop, serviceAccount: db, node: node-2, ip: 10.44.2.2 }
  - { name: monitor, namespace: legacy, serviceAccount: monitor, node: node-1, ip: 10.44.1.9, mesh: false }
policies:
  - { name: allow, namespace: shop, scope: namespace, action: ALLOW, rules: [{ namespaces: [shop] }] }
`,
)

const children = new Set<ChildProcess>()
afterEach(() => {
  for (const child of children) child.kill('SIGKILL')
  children.clear()
})

/** The control plane as the demo runs it: its own process, ready once it says so on fd 3. */
async function startControlPlane(stateDir: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(EXAMPLE_DIR, 'src', 'control-plane-main.ts'), '--config', meshYaml, '--state-dir', stateDir], {
    cwd: EXAMPLE_DIR,
    stdio: ['ignore', 'ignore', 'inherit', 'pipe'],
    env: { ...process.env, AKM_READY_FD: '3', TSX_TSCONFIG_PATH: join(ROOT_DIR, 'tsconfig.json') },
  })
  children.add(child)
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdio[3] as Readable }).once('line', resolve)
    child.once('exit', (code) => reject(new Error(`control plane exited (${code}) before it was ready`)))
  })
  expect(JSON.parse(line)).toMatchObject({ ready: true })
  return child
}

const exited = (child: ChildProcess): Promise<void> => new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())))

describe('local control plane', () => {
  it('refuses two policies with the same namespace/name on PUT /v1/policies, as mesh.yaml does (issue 15)', async () => {
    const stateDir = join(dir, 'policies')
    await startControlPlane(stateDir)
    const socket = state.socket(stateDir)
    const policy = { name: 'allow', namespace: 'shop', scope: 'namespace', action: 'ALLOW', rules: [{ namespaces: ['shop'] }] }
    const before = (await callControlPlane(socket, 'GET', '/v1/snapshot')) as MeshState
    const error = await callControlPlane(socket, 'PUT', '/v1/policies', [policy, { ...policy, action: 'DENY' }]).catch((err: unknown) => err as Error & { details: { status: number } })
    expect(error).toBeInstanceOf(Error)
    expect((error as { details: { status: number } }).details.status).toBe(400)
    expect((error as Error).message).toMatch(/policies\[1\]\.namespace\/name: expected a namespace\/name no other entry has, got "shop\/allow"/)
    const after = (await callControlPlane(socket, 'GET', '/v1/snapshot')) as MeshState
    expect(after.revision).toBe(before.revision)
    expect(after.policies).toEqual(before.policies)
    // The same names in two namespaces are two policies.
    const accepted = (await callControlPlane(socket, 'PUT', '/v1/policies', [policy, { ...policy, namespace: 'billing' }])) as { policies: number }
    expect(accepted.policies).toBe(2)
  })

  it('a watcher survives the control plane killed with SIGKILL, reports it, and follows the restarted one (issue 15)', async () => {
    const stateDir = join(dir, 'watch')
    let child = await startControlPlane(stateDir)
    const states: MeshState[] = []
    const errors: Error[] = []
    let notify: (() => void) | undefined
    const next = (): Promise<void> => new Promise((resolve) => (notify = resolve))
    let arrived = next()
    const stop = watchControlPlane(state.socket(stateDir), (s) => {
      states.push(s)
      notify?.()
    }, (err) => errors.push(err))
    try {
      await arrived
      expect(states).toHaveLength(1)
      // Killed mid-stream: the watch response is cut without its last chunk.
      child.kill('SIGKILL')
      await exited(child)
      arrived = next()
      child = await startControlPlane(stateDir)
      await arrived
      expect(states).toHaveLength(2)
      expect(states[1]!.trustDomain).toBe('cluster.local')
      // The cut stream and the refused reconnects were reported, not thrown.
      expect(errors.length).toBeGreaterThan(0)
      expect(errors.map((e) => e.message).join('\n')).toMatch(/aborted|ECONNRESET|ECONNREFUSED|ENOENT/)
    } finally {
      stop()
    }
  })

  it('runs the CA service: a node\'s credential gets the identities of its own mesh pods only', async () => {
    const stateDir = join(dir, 'ca')
    await startControlPlane(stateDir)
    const credential = state.nodeCredential('node-1', stateDir)
    expect(statSync(credential).mode & 0o777).toBe(0o600)
    const node1 = createNodeIdentitySource(stateDir, 'node-1', 'cluster.local')
    const api = SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/api')
    expect((await node1.fetch(api, { ttlSeconds: 600 })).id.toString()).toBe(api.toString())
    // db runs on node-2; monitor is not in the mesh.
    await expect(node1.fetch(SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/db'), { ttlSeconds: 600 })).rejects.toThrow(/request impersonation authentication failure/)
    await expect(node1.fetch(SpiffeId.parse('spiffe://cluster.local/ns/legacy/sa/monitor'), { ttlSeconds: 600 })).rejects.toThrow(/request impersonation authentication failure/)
    await node1.close()
    const anonymous = createIstioCaSource({ address: `unix://${state.caSocket(stateDir)}`, trustDomain: 'cluster.local', rootCertificates: () => (callControlPlane(state.socket(stateDir), 'GET', '/v1/bundle') as Promise<{ keys: Array<{ x5c: string[] }> }>).then((b) => `-----BEGIN CERTIFICATE-----\n${b.keys[0]!.x5c[0]}\n-----END CERTIFICATE-----\n`), serverIdentity: { spiffeId: controlPlaneId('cluster.local') } })
    await expect(anonymous.fetch(api, { ttlSeconds: 600 })).rejects.toThrow(/request authenticate failure/)
    await anonymous.close()
    const { readFileSync } = await import('node:fs')
    const read = (): Array<{ event: string; reason?: string }> => readFileSync(state.caAudit(stateDir), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; reason?: string })
    // The control plane appends each line as it answers, in another process: the file is the only view (5 s at most).
    for (let waited = 0; read().length < 4 && waited < 5000; waited += 50) await new Promise((resolve) => setTimeout(resolve, 50))
    const audit = read()
    expect(audit.map((e) => e.event)).toEqual(['issued', 'refused', 'refused', 'refused'])
    expect(audit[1]!.reason).toBe('no pod of shop/db, not Failed, is scheduled on node node-1')
    expect(audit[3]!.reason).toBe('no credential any authenticator accepts')
  })
})
