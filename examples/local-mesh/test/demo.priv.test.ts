import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { describePrivileged } from '../../../test/support/privileged'
import type { DemoReport, Flow } from '../src/report'

const demo = fileURLToPath(new URL('../bin/demo.mjs', import.meta.url))
const stateDir = join(mkdtempSync(join(tmpdir(), 'akm-test-')), 'state')
// A prefix and a state directory of its own: another mesh on this machine (a demo someone
// keeps running, the same test in another checkout) is neither touched nor counted.
const prefix = `akt${process.pid % 100_000}`
const env = { ...process.env, AMBIENTKIT_LOCAL_STATE_DIR: stateDir, AMBIENTKIT_LOCAL_PREFIX: prefix }

function runDemo(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [demo, ...args], { env, maxBuffer: 64 * 1024 * 1024, timeout: 240_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
  })
}

function demoNamespaces(): string[] {
  return existsSync('/run/netns') ? readdirSync('/run/netns').filter((n) => n.startsWith(`${prefix}-`)) : []
}

/** Processes of this test's demo (they inherit its state directory) whose command line is one of the demo's: apps, agents, control plane, its tcpdump. */
function demoProcesses(): string[] {
  const found: string[] = []
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ')
      if (!readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`AMBIENTKIT_LOCAL_STATE_DIR=${stateDir}`)) continue
      if (/echo\.mjs --name|node-agent-main\.ts|control-plane-main\.ts|node-link\.pcap/.test(cmdline)) found.push(`${pid}: ${cmdline}`)
    } catch {
      // The process ended while we looked.
    }
  }
  return found
}

describePrivileged('local mesh demo (end to end)', ['ip', 'iptables', 'nft', 'tcpdump'], () => {
  let result: { code: number; stdout: string; stderr: string }
  let report: DemoReport
  const flow = (from: string, to: string, phase: Flow['phase'] = 'matrix'): Flow => {
    const found = report.flows.find((f) => f.phase === phase && f.from === from && f.to === to)
    if (found === undefined) throw new Error(`no ${phase} flow ${from} → ${to} in the report`)
    return found
  }

  let ran = false
  beforeAll(async () => {
    const running = demoNamespaces()
    if (running.length > 0) throw new Error(`namespaces of this test's prefix exist already (${running.join(', ')}): a test run before was not cleaned up`)
    ran = true
    result = await runDemo(['--json'])
    try {
      report = JSON.parse(result.stdout) as DemoReport
    } catch {
      throw new Error(`the demo printed no JSON report (exit ${result.code}); stderr:\n${result.stderr}`)
    }
  }, 300_000)

  afterAll(async () => {
    // Safety net only: the assertions below check the demo cleaned up by itself.
    if (ran) await runDemo(['--down'])
  }, 60_000)

  it('exits 0 with every check of its report passing', () => {
    expect(report.checks.filter((c) => !c.ok)).toEqual([])
    expect(report.ok).toBe(true)
    expect(result.code).toBe(0)
  })

  it('allowed flows reach the app through HBONE, with both SPIFFE identities in the access logs', () => {
    const direct = flow('shop/frontend', 'shop/api')
    expect(direct).toMatchObject({
      result: 'reached',
      answeredBy: 'shop/api',
      // Source preservation: the app sees the client pod's address, not its node proxy's.
      peerSeen: '10.44.1.2',
      protocol: 'HBONE',
      sourceIdentity: 'spiffe://cluster.local/ns/shop/sa/frontend',
      destinationIdentity: 'spiffe://cluster.local/ns/shop/sa/api',
      policy: 'shop/api-allow-frontend',
    })
    expect(flow('billing/payments', 'billing/ledger')).toMatchObject({ result: 'reached', protocol: 'HBONE', policy: 'billing/ledger-allow' })
    expect(flow('shop/frontend', 'api.shop (VIP)')).toMatchObject({ result: 'reached', answeredBy: 'shop/api', protocol: 'HBONE' })
  })

  it('denied flows are refused by the destination with the deciding policy named', () => {
    expect(flow('billing/payments', 'shop/api')).toMatchObject({
      result: 'denied',
      protocol: 'HBONE',
      sourceIdentity: 'spiffe://cluster.local/ns/billing/sa/payments',
      policy: 'shop/api-deny-billing',
      outcome: 'denied',
    })
    expect(flow('shop/frontend', 'billing/ledger')).toMatchObject({ result: 'denied', policy: 'billing/ledger-deny-shop' })
    expect(flow('billing/payments', 'shop/api').answeredBy).toBeUndefined()
  })

  it('the non-mesh pod reaches mesh pods only as policy says, in plaintext', () => {
    expect(flow('legacy/monitor', 'shop/api')).toMatchObject({ result: 'denied', protocol: 'TCP', policy: 'shop/deny-plaintext' })
    expect(flow('legacy/monitor', 'billing/ledger')).toMatchObject({ result: 'reached', protocol: 'TCP', answeredBy: 'billing/ledger', policy: 'billing/ledger-allow' })
    // Mesh pods reach it by passthrough: it is outside the mesh.
    expect(flow('shop/frontend', 'legacy/monitor')).toMatchObject({ result: 'reached', protocol: 'TCP', answeredBy: 'legacy/monitor' })
  })

  it('the capture between the nodes shows TLS on 15008 and none of the mesh requests in plaintext', () => {
    const capture = report.capture
    expect(capture.tlsRecords.handshake).toBeGreaterThan(0)
    expect(capture.tlsRecords.applicationData).toBeGreaterThan(0)
    expect(capture.nonTlsBytesOn15008).toBe(0)
    expect(capture.meshMarkers).toBeGreaterThan(10)
    expect(capture.meshMarkersSeen).toEqual([])
    // The same analysis does find the markers of the non-mesh pod's plaintext requests.
    expect(capture.plaintextMarkersSeen).toBeGreaterThan(0)
  })

  it('a pod added at run time is enrolled and reached through the mesh; traffic meanwhile is unaffected', () => {
    expect(report.addRemove).toBeDefined()
    expect(flow('shop/frontend', 'shop/api-late', 'add-remove')).toMatchObject({ result: 'reached', protocol: 'HBONE', answeredBy: 'shop/api-late' })
    expect(report.addRemove!.background.sent).toBeGreaterThan(0)
    expect(report.addRemove!.background.reached).toBe(report.addRemove!.background.sent)
  })

  it('while a node agent is down its captured pods fail closed, and recover after it restarts', () => {
    const down = report.flows.filter((f) => f.phase === 'agent-down')
    const back = report.flows.filter((f) => f.phase === 'agent-restarted')
    expect(down.length).toBeGreaterThan(0)
    for (const f of down) expect(f.result).not.toBe('reached')
    expect(back.map((f) => [f.from, f.to, f.result, f.protocol])).toEqual(down.map((f) => [f.from, f.to, 'reached', 'HBONE']))
    expect(report.restart!.reconciled.failed).toBe(0)
  })

  it('the control plane killed with SIGKILL under traffic: agents keep serving and reconnect (issue 15)', () => {
    const r = report.controlPlaneRestart!
    expect(r).toBeDefined()
    expect(r.agentsAlive).toBe(true)
    expect(r.background.sent).toBeGreaterThan(0)
    expect(r.background.reached).toBe(r.background.sent)
    expect(r.reconnectedInMs).toBeTypeOf('number')
  })

  it('the CA refuses node-1 a pod of node-2 and a caller without credential; apps get their own SVID over the Workload API', () => {
    const identity = report.identity!
    expect(identity.impersonation).toMatchObject({ node: 'node-1', refused: true, answer: expect.stringContaining('request impersonation authentication failure') })
    expect(identity.impersonation.auditReason).toMatch(/is scheduled on node node-1/)
    expect(identity.unauthenticated).toMatchObject({ refused: true, answer: expect.stringContaining('request authenticate failure'), auditReason: 'no credential any authenticator accepts' })
    expect(identity.workloadApi.map((w) => [w.pod, w.socketOf, w.got.id ?? 'refused'])).toEqual([
      ['shop/frontend', 'node-1', 'spiffe://cluster.local/ns/shop/sa/frontend'],
      ['legacy/monitor', 'node-1', 'refused'],
      ['shop/api', 'node-1', 'refused'],
    ])
    for (const w of identity.workloadApi.filter((x) => x.got.id === undefined)) expect(w.got.error).toMatch(/PERMISSION_DENIED: no identity issued/)
  })

  it("a pod reaches its node's readiness and metrics, never its /config_dump (issue 20)", () => {
    expect(report.adminFromPod).toMatchObject({ ready: 200, metrics: 200, configDump: 403 })
  })

  it('leaves no namespace, process or state behind', () => {
    expect(demoNamespaces()).toEqual([])
    expect(demoProcesses()).toEqual([])
    expect(existsSync(stateDir)).toBe(false)
  })
})
