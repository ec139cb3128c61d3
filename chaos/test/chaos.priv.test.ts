// The short chaos run of the suite: 60 s of faults with a fixed seed on the
// local mesh under load. Every invariant must hold (zero violations) and the
// machine must be back to its baseline afterwards. The trust bundle rotation
// is left to the long run (it takes the SVID lifetime and more) and to
// examples/local-mesh/test/rotation.priv.test.ts.
import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { describePrivileged } from '../../test/support/privileged'

const runner = fileURLToPath(new URL('../run.mjs', import.meta.url))
const demo = fileURLToPath(new URL('../../examples/local-mesh/bin/demo.mjs', import.meta.url))
const scratch = mkdtempSync(join(tmpdir(), 'akm-chaos-test-'))
const stateDir = join(scratch, 'state')
const prefix = `akx${process.pid % 100_000}`
const env = { ...process.env, AMBIENTKIT_LOCAL_STATE_DIR: stateDir, AMBIENTKIT_LOCAL_PREFIX: prefix }
const FAULTS = ['policy-flip', 'pod-add-remove', 'agent-kill', 'control-plane-kill', 'link-flap', 'link-loss', 'link-slow', 'capture-flush', 'capture-table-delete']

interface Report {
  seed: number
  ok: boolean
  faults: Array<{ kind: string; injected: number; recovered: number }>
  invariants: Array<{ name: string; violations: number; examples: string[] }>
  traffic: { connections: { sent: number; reached: number }; transfers: { completed: number }; denied: { sent: number; refused: number; timedOut: number } }
  capture: { plaintextControlSeen: boolean; meshMarkers: number }
}

const namespaces = (): string[] => (existsSync('/run/netns') ? readdirSync('/run/netns').filter((n) => n.startsWith(`${prefix}-`)) : [])

describePrivileged('chaos run (60 s, fixed seed)', ['ip', 'nft', 'tc', 'tcpdump', 'iptables', 'nsenter'], () => {
  let report: Report
  let stderr = ''
  beforeAll(async () => {
    const result = await new Promise<{ stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [runner, '--duration', '60s', '--seed', '20261208', '--faults', FAULTS.join(','), '--json'], { env, maxBuffer: 64 * 1024 * 1024, timeout: 400_000 }, (_err, stdout, err) => resolve({ stdout, stderr: err }))
    })
    stderr = result.stderr
    try {
      report = JSON.parse(result.stdout) as Report
    } catch {
      throw new Error(`the chaos run printed no JSON report; stderr:\n${result.stderr.slice(-4000)}`)
    }
  }, 420_000)

  afterAll(async () => {
    // Safety net only: the run's own baseline check covers its cleanup.
    if (namespaces().length > 0) await new Promise((resolve) => execFile(process.execPath, [demo, '--down'], { env }, resolve))
    rmSync(scratch, { recursive: true, force: true })
  }, 60_000)

  it('holds every invariant: zero violations', () => {
    expect(report.invariants.filter((i) => i.violations > 0), stderr.slice(-3000)).toEqual([])
    expect(report.ok).toBe(true)
  })

  it('injected faults of several kinds, and traffic recovered after each', () => {
    expect(report.faults.length).toBeGreaterThanOrEqual(4)
    for (const f of report.faults) expect(f, f.kind).toMatchObject({ recovered: f.injected })
  })

  it('carried real load meanwhile: connections, long transfers, denied flows, markers searched on the link', () => {
    expect(report.traffic.connections.reached).toBeGreaterThan(200)
    expect(report.traffic.transfers.completed).toBeGreaterThan(0)
    // Each denied flow was refused, or went unanswered for 3 s while a fault cut its path; none reached the app (the invariants).
    expect(report.traffic.denied.refused).toBeGreaterThan(0)
    expect(report.traffic.denied.refused + report.traffic.denied.timedOut).toBe(report.traffic.denied.sent)
    expect(report.capture.meshMarkers).toBeGreaterThan(200)
    expect(report.capture.plaintextControlSeen).toBe(true)
  })

  it('leaves no namespace or state behind', () => {
    expect(namespaces()).toEqual([])
    expect(existsSync(stateDir)).toBe(false)
  })
})
