/**
 * `npx tsx bench/identity-plane.ts [--quick] [--json]`: what the identity
 * plane costs, each server in a process of its own so its CPU is its own.
 *
 * - CreateCertificate: ECDSA P-256 issuances per second through the whole
 *   path (gRPC over TLS, a Kubernetes token authenticated by TokenReview with
 *   the review cached, Istio's impersonation rule with the pod list cached,
 *   CSR checks, signing, the audit line), by `createIstioCaSource` clients
 *   keeping 32 requests in flight; and issuances per CPU-second of the CA
 *   process (target: 500 on one core).
 * - Workload API: FetchX509SVID stream updates delivered per second to 20
 *   streams while the server's bundles change as fast as it can send, and the
 *   server's CPU per update.
 *
 * Loopback and unix sockets only; the Kubernetes API is a stand-in in the CA's
 * process answering one recorded TokenReview and pod.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import {
  SpiffeId, TrustBundle, createCertificateAuthority, createIdentityManager, createLocalCaSource,
} from '@ambientkit/identity'
import {
  auditToJsonLines, createCaServer, createIstioCaSource, createKubernetesApi, createKubernetesPodDirectory, createKubernetesTokenAuthenticator,
} from '@ambientkit/ca'
import { createWorkloadApiServer, createWorkloadApiSource } from '@ambientkit/workload-api'
import { cpuSeconds } from './lib/proc'
import { formatTable, wantsJson } from './lib/table'

const quick = process.argv.includes('--quick')
const SECONDS = quick ? 2 : 10
const API = SpiffeId.parse('spiffe://bench.local/ns/shop/sa/api')
const CA_HOST = 'ca.bench.local'

/** The CA service's process: a stand-in Kubernetes API, the CA, the service; prints where it listens. */
async function serveCa(): Promise<void> {
  const pod = { metadata: { name: 'agent-0', namespace: 'ambientkit-system', uid: 'pod-uid-0' }, spec: { nodeName: 'node-1', serviceAccountName: 'ambientkit-node' }, status: { phase: 'Running' } }
  const workload = { metadata: { name: 'api-0', namespace: 'shop', uid: 'pod-uid-1' }, spec: { nodeName: 'node-1', serviceAccountName: 'api' }, status: { phase: 'Running' } }
  const kube = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      res.setHeader('content-type', 'application/json')
      if (req.method === 'POST') {
        res.end(JSON.stringify({ kind: 'TokenReview', status: { authenticated: true, audiences: ['istio-ca'], user: { username: 'system:serviceaccount:ambientkit-system:ambientkit-node', extra: { 'authentication.kubernetes.io/pod-name': ['agent-0'], 'authentication.kubernetes.io/pod-uid': ['pod-uid-0'] } } } }))
      } else if (req.url?.includes('/pods/')) {
        res.end(JSON.stringify(pod))
      } else {
        res.end(JSON.stringify({ kind: 'PodList', items: [workload] }))
      }
    })
  }).listen(0, '127.0.0.1')
  await new Promise((resolve) => kube.once('listening', resolve))
  const api = createKubernetesApi({ url: `http://127.0.0.1:${(kube.address() as AddressInfo).port}`, token: () => 'control-plane' })
  const ca = await createCertificateAuthority({ trustDomain: 'bench.local' })
  const own = createIdentityManager({ source: createLocalCaSource(ca, { dnsNames: () => [CA_HOST] }) })
  const server = await createCaServer({
    ca,
    authenticators: [createKubernetesTokenAuthenticator({ api, trustDomain: 'bench.local' })],
    trustedNodeAccounts: ['ambientkit-system/ambientkit-node'],
    pods: createKubernetesPodDirectory({ api }),
    tls: { manager: own, id: 'spiffe://bench.local/ns/ambientkit-system/sa/control-plane' },
    listen: { host: '127.0.0.1', port: 0 },
    // Every call's audit line is serialized, as for a log; where it goes is the operator's choice.
    audit: auditToJsonLines(() => undefined),
  })
  const { port } = server.address() as { port: number }
  console.log(JSON.stringify({ address: `127.0.0.1:${port}`, roots: ca.bundle.x509AuthoritiesPem() }))
}

/** The Workload API's process: one identity for every caller, bundles that change as fast as updates go out. */
async function serveWorkloadApi(socketPath: string): Promise<void> {
  const ca = await createCertificateAuthority({ trustDomain: 'bench.local' })
  const other = await createCertificateAuthority({ trustDomain: 'partner.local' })
  const source = createLocalCaSource(ca)
  const manager = createIdentityManager({ source })
  await createWorkloadApiServer({ socketPath, manager, attest: () => [API] })
  let flip = false
  // A change every tick of the event loop: the server coalesces per stream, so updates delivered are what it can send.
  const change = (): void => {
    flip = !flip
    if (flip) source.bundles.set(TrustBundle.create({ trustDomain: 'partner.local', x509Authorities: other.bundle.x509Authorities }))
    else source.bundles.delete('partner.local')
    setImmediate(change)
  }
  console.log(JSON.stringify({ ready: true }))
  await new Promise((resolve) => process.stdin.once('data', resolve))
  change()
}

function child(args: string[]): { process: ChildProcess; first: Promise<Record<string, string>> } {
  const proc = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), ...args], { stdio: ['pipe', 'pipe', 'inherit'] })
  const first = new Promise<Record<string, string>>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once('line', (line) => resolve(JSON.parse(line) as Record<string, string>))
    proc.once('exit', (code) => reject(new Error(`bench server exited (${code})`)))
  })
  return { process: proc, first }
}

interface Row { name: string; rate: number; unit: string; cpu: number; perCore: number }

async function issuance(): Promise<Row> {
  const server = child(['--serve', 'ca'])
  try {
    const { address, roots } = (await server.first) as { address: string; roots: string }
    const sources = Array.from({ length: 4 }, () => createIstioCaSource({ address, trustDomain: 'bench.local', rootCertificates: roots, serverIdentity: { serverName: CA_HOST }, token: 'node-agent-token' }))
    // Warm up: connections, the TokenReview, the pod list.
    await Promise.all(sources.map((s) => s.fetch(API, { ttlSeconds: 3600 })))
    const pid = server.process.pid!
    const cpu0 = cpuSeconds(pid)
    const t0 = performance.now()
    let done = 0
    const deadline = t0 + SECONDS * 1000
    await Promise.all(Array.from({ length: 32 }, async (_, i) => {
      while (performance.now() < deadline) {
        await sources[i % sources.length]!.fetch(API, { ttlSeconds: 3600 })
        done++
      }
    }))
    const elapsed = (performance.now() - t0) / 1000
    const cpu = (cpuSeconds(pid) - cpu0) / elapsed
    await Promise.all(sources.map((s) => s.close()))
    return { name: 'CreateCertificate, P-256, TokenReview cached', rate: done / elapsed, unit: 'issuances/s', cpu, perCore: done / elapsed / cpu }
  } finally {
    server.process.kill()
  }
}

async function updates(): Promise<Row> {
  const dir = mkdtempSync(join(tmpdir(), 'ak-bench-wl-'))
  const socket = join(dir, 'socket')
  const server = child(['--serve', 'workload-api', socket])
  try {
    await server.first
    const streams = 20
    let delivered = 0
    const sources = Array.from({ length: streams }, () => createWorkloadApiSource({ address: `unix://${socket}` }))
    const offs = sources.map((s) => s.subscribe(() => (delivered += 1)))
    await Promise.all(sources.map((s) => s.fetch(API, { ttlSeconds: 3600 })))
    server.process.stdin!.write('go\n')
    await new Promise((resolve) => setTimeout(resolve, 500))
    const pid = server.process.pid!
    const cpu0 = cpuSeconds(pid)
    const before = delivered
    const t0 = performance.now()
    await new Promise((resolve) => setTimeout(resolve, SECONDS * 1000))
    const elapsed = (performance.now() - t0) / 1000
    const count = delivered - before
    const cpu = (cpuSeconds(pid) - cpu0) / elapsed
    offs.forEach((off) => off())
    await Promise.all(sources.map((s) => s.close()))
    return { name: `FetchX509SVID updates, ${streams} streams`, rate: count / elapsed, unit: 'updates/s', cpu, perCore: count / elapsed / cpu }
  } finally {
    server.process.kill()
    rmSync(dir, { recursive: true, force: true })
  }
}

const serveIndex = process.argv.indexOf('--serve')
if (serveIndex >= 0) {
  const what = process.argv[serveIndex + 1]
  if (what === 'ca') await serveCa()
  else await serveWorkloadApi(process.argv[serveIndex + 2]!)
} else {
  const rows = [await issuance(), await updates()]
  if (wantsJson) {
    console.log(JSON.stringify(rows, null, 2))
  } else {
    console.log(formatTable([
      ['measurement', 'rate', 'unit', 'server CPU (cores)', 'per server CPU-second'],
      ...rows.map((r) => [r.name, r.rate.toFixed(0), r.unit, r.cpu.toFixed(2), r.perCore.toFixed(0)]),
    ]))
  }
  process.exit(0)
}
