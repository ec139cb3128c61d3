// Rotation under traffic, on both HBONE data paths, in a live local mesh:
// SVIDs of 20 s renewed three times and more, and a CA root rotation (new root
// added, new CA signing, old root removed) while a client sends across nodes,
// with no failed request.
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, expect, it } from 'vitest'
import { openNetns, type Netns } from '@ambientkit/redirect'
import { describePrivileged } from '../../../test/support/privileged'
import { callControlPlane } from '../src/client'
import { EXAMPLE_DIR, ROOT_DIR, state } from '../src/paths'
import { requestFromPod } from '../src/traffic'

const demo = fileURLToPath(new URL('../bin/demo.mjs', import.meta.url))
const meshYaml = readFileSync(fileURLToPath(new URL('../mesh.yaml', import.meta.url)), 'utf8')
const TTL = 20

describePrivileged('rotation under traffic in a live mesh', ['ip', 'iptables', 'nft', 'tcpdump'], () => {
  const root = mkdtempSync(join(tmpdir(), 'akm-rot-'))
  const started: Array<() => Promise<unknown>> = []
  afterAll(async () => {
    for (const down of started) await down()
  }, 120_000)

  it.each(['node', 'native'] as const)('%s data path: three SVID rotations and a CA root rotation, no failed request', async (dataPath) => {
    const stateDir = join(root, dataPath, 'state')
    const prefix = `akr${dataPath === 'node' ? 'n' : 'x'}${process.pid % 10_000}`
    const env = { ...process.env, AMBIENTKIT_LOCAL_STATE_DIR: stateDir, AMBIENTKIT_LOCAL_PREFIX: prefix }
    const config = join(root, `${dataPath}.yaml`)
    writeFileSync(config, meshYaml.replace(/^svidTtlSeconds: \d+/m, `svidTtlSeconds: ${TTL}`).replace(/^ {2}# dataPath: node .*$/m, `  dataPath: ${dataPath}`))
    const run = (args: string[]): Promise<{ stdout: string; stderr: string }> => promisify(execFile)(process.execPath, [demo, ...args, '--config', config], { env, timeout: 180_000 })
    started.push(() => run(['--down']).catch(() => undefined))
    await run(['--up'])

    const socket = state.socket(stateDir)
    const pod = (name: string): Netns => openNetns(`/run/netns/${prefix}-p-${name}`)
    const frontend = pod('shop-frontend')
    const payments = pod('billing-payments')
    const api = pod('shop-api')
    const ledger = pod('billing-ledger')
    // A pair that never talked before makes a new HBONE session: a full handshake with the SVIDs and bundles of that moment.
    const fresh = async (from: Netns, to: string, phase: string): Promise<void> => {
      const result = await requestFromPod(from, to, 8080, phase.replace(/[^a-z]+/g, '-'), 5000)
      expect({ phase, ok: result.ok, error: result.error }).toEqual({ phase, ok: true, error: undefined })
    }
    const outcomes: Array<{ ok: boolean; error?: string; at: number }> = []
    const t0 = Date.now()
    let stop = false
    // frontend (node-1) → api (node-2), one request after another for the whole test.
    const traffic = (async () => {
      while (!stop) {
        const r = await requestFromPod(frontend, '10.44.2.2', 8080, 'rotation', 5000)
        outcomes.push({ ok: r.ok, ...(r.error ? { error: r.error } : {}), at: Date.now() - t0 })
      }
    })()
    const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
    // The trust bundle an app in a pod gets from its node's Workload API: the node agent's own, as it is now.
    const rootsSeenBy = async (podName: string, node: string): Promise<string> => {
      const { stdout } = await promisify(execFile)('ip', ['netns', 'exec', `${prefix}-p-${podName}`, 'env', `SPIFFE_ENDPOINT_SOCKET=unix://${state.workloadApiSocket(node, stateDir)}`, `TSX_TSCONFIG_PATH=${join(ROOT_DIR, 'tsconfig.json')}`, process.execPath, '--import', 'tsx', join(EXAMPLE_DIR, 'app', 'fetch-svid.ts')], { cwd: EXAMPLE_DIR })
      return (JSON.parse(stdout) as { roots: string }).roots
    }
    const rotate = (step: string): Promise<{ roots: string[]; signer: string }> => callControlPlane(socket, 'POST', '/v1/ca/rotate', { step }) as Promise<{ roots: string[]; signer: string }>
    try {
      await sleep(3000)
      const added = await rotate('add-root')
      expect(added.roots).toHaveLength(2)
      await sleep(2000)
      // Pushed to every agent at once, not learned at their next renewal.
      expect([await rootsSeenBy('shop-frontend', 'node-1'), await rootsSeenBy('shop-api', 'node-2')]).toEqual(['2', '2'])
      await fresh(payments, '10.44.2.3', 'both roots trusted, old CA signing')
      const switched = await rotate('switch')
      expect(switched.signer).toBe(added.roots[1])
      // Every SVID renews onto the new CA within its lifetime; then the old root can go.
      await sleep((TTL + 2) * 1000)
      await fresh(api, '10.44.1.2', 'new CA signing, both roots trusted')
      const removed = await rotate('remove-old-root')
      expect(removed.roots).toEqual([switched.signer])
      await sleep(2000)
      expect([await rootsSeenBy('shop-frontend', 'node-1'), await rootsSeenBy('shop-api', 'node-2')]).toEqual(['1', '1'])
      await fresh(ledger, '10.44.1.3', 'old root removed')
      await sleep(10_000)
      await fresh(api, '10.44.1.3', 'old root removed, SVIDs renewed since')
    } finally {
      stop = true
      await traffic
      for (const ns of [frontend, payments, api, ledger]) await ns.close()
    }
    const failed = outcomes.filter((o) => !o.ok)
    expect(failed).toEqual([])
    expect(outcomes.length).toBeGreaterThan(100)
    // The agents' logs: each side's SVID renewed at least three times meanwhile.
    const rotations = (node: string, id: string): number =>
      readFileSync(join(state.logs(stateDir), `agent-${node}.log`), 'utf8').split('\n').filter((l) => l.includes('"msg":"rotated SVID"') && l.includes(`"id":"${id}"`)).length
    expect(rotations('node-1', 'spiffe://cluster.local/ns/shop/sa/frontend')).toBeGreaterThanOrEqual(3)
    expect(rotations('node-2', 'spiffe://cluster.local/ns/shop/sa/api')).toBeGreaterThanOrEqual(3)
    await run(['--down'])
  }, 240_000)
})
