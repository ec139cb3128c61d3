// `--upgrade <node>` in a live local mesh: a new agent process replaces a
// node's running one while a client on the other node sends requests to a
// pod of the upgraded node.
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, expect, it } from 'vitest'
import { openNetns } from '@ambientkit/redirect'
import { describePrivileged } from '../../../test/support/privileged'
import { state } from '../src/paths'
import { requestFromPod } from '../src/traffic'

const demo = fileURLToPath(new URL('../bin/demo.mjs', import.meta.url))
const config = fileURLToPath(new URL('../mesh.yaml', import.meta.url))

describePrivileged('upgrading a node agent in a live mesh', ['ip', 'iptables', 'nft', 'tcpdump'], () => {
  const stateDir = join(mkdtempSync(join(tmpdir(), 'akm-upg-')), 'state')
  const prefix = `aku${process.pid % 10_000}`
  const env = { ...process.env, AMBIENTKIT_LOCAL_STATE_DIR: stateDir, AMBIENTKIT_LOCAL_PREFIX: prefix }
  const run = (args: string[]): Promise<{ stdout: string; stderr: string }> => promisify(execFile)(process.execPath, [demo, ...args, '--config', config], { env, timeout: 180_000 })
  afterAll(async () => {
    await run(['--down']).catch(() => undefined)
  }, 120_000)

  it('--upgrade node-2 replaces its agent; requests to its pod from another node keep succeeding', async () => {
    await run(['--up'])
    const agentPid = (): number => (JSON.parse(readFileSync(join(state.pids(stateDir), 'agent-node-2.pid'), 'utf8')) as { pid: number }).pid
    const before = agentPid()
    const frontend = openNetns(`/run/netns/${prefix}-p-shop-frontend`)
    const outcomes: Array<{ ok: boolean; error?: string }> = []
    let stop = false
    let waiting: { count: number; resolve: () => void } | undefined
    /** Resolves once `count` requests have ended. */
    const requestsReach = (count: number): Promise<void> => new Promise((resolve) => (waiting = { count, resolve }))
    // frontend (node-1) → api (node-2), one request after another, bounded.
    const traffic = (async () => {
      while (!stop && outcomes.length < 100_000) {
        const r = await requestFromPod(frontend, '10.44.2.2', 8080, 'upgrade', 5000)
        outcomes.push({ ok: r.ok, ...(r.error ? { error: r.error } : {}) })
        if (waiting !== undefined && outcomes.length >= waiting.count) waiting.resolve()
      }
    })()
    try {
      const upgraded = await run(['--upgrade', 'node-2'])
      expect(upgraded.stdout).toMatch(new RegExp(`^node node-2: agent pid ${before} replaced by pid \\d+$`, 'm'))
      const after = agentPid()
      expect(after).not.toBe(before)
      const count = outcomes.length
      // The new agent serves: requests made after the old one exited succeed.
      await requestsReach(count + 20)
      expect(outcomes.slice(count).filter((o) => !o.ok)).toEqual([])
    } finally {
      stop = true
      await traffic
      await frontend.close()
    }
    // None refused (the new agent's listeners were up before the old one's closed), none reset (the old one drained).
    expect(outcomes.filter((o) => !o.ok)).toEqual([])
    await expect(run(['--upgrade', 'node-9'])).rejects.toMatchObject({ stderr: expect.stringMatching(/--upgrade node-9: no such node/) })
    await run(['--down'])
  }, 240_000)
})
