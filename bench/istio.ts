/**
 * `npx tsx bench/istio.ts [--quick] [--json]`: how fast configuration from
 * istiod converges, and what it costs to hold. A fake istiod (grpc-js on
 * loopback, TLS, resources encoded beforehand) pushes to a WDS client in
 * this process; a push's time runs from the server's write until the client
 * has applied it to the workload registry and the policy store (its
 * `response` event, which comes after the state changed and the ACK was
 * written).
 *
 * - a full push of 1,000 workloads (in 100 services) and 100 policies, into
 *   an empty client, after two uncounted rounds that warm the JIT (target:
 *   under 100 ms);
 * - one workload update on top of 10,000 workloads (target: under 5 ms);
 * - the heap the client and the registry hold for 10,000 workloads.
 */
import { runInNewContext } from 'node:vm'
import { setFlagsFromString } from 'node:v8'
import { createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
import { createWdsClient, type WdsClient, type WdsEvent } from '@ambientkit/istio'
import { messageType } from '../packages/istio/src/protos'
import { ADDRESS, AUTHORIZATION, startFakeIstiod, type FakeStream, type PushResource } from '../packages/istio/test/support/fake-istiod'
import { makeTestPki } from '../packages/istio/test/support/tls'
import { formatSummary, summarize, type Summary } from './lib/stats'
import { formatTable, wantsJson } from './lib/table'

const quick = process.argv.includes('--quick')
const ROUNDS = quick ? 3 : 10
const UPDATES = quick ? 20 : 200

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

const addressType = messageType('istio.workload.Address')
const authorizationType = messageType('istio.security.Authorization')
const NAMESPACES = 10

function workload(i: number, revision = 'v1'): PushResource {
  const ns = `ns-${i % NAMESPACES}`
  const name = `app-${i}`
  const uid = `Kubernetes//Pod/${ns}/${name}`
  const service = `${ns}/svc-${i % 100}.${ns}.svc.cluster.local`
  const message = {
    workload: {
      uid, name, namespace: ns, serviceAccount: `sa-${i % 50}`, node: `node-${i % 20}`, tunnelProtocol: 1,
      addresses: [Buffer.from([10, 128 + (i >> 16), (i >> 8) & 0xff, i & 0xff])],
      canonicalName: `app-${i % 100}`, canonicalRevision: revision, workloadName: `app-${i % 100}`, clusterId: 'Kubernetes',
      services: { [service]: { ports: [{ servicePort: 80, targetPort: 8080 }] } },
      ...(i % 10 === 0 ? { authorizationPolicies: [`${ns}/selected-${i % 20}`] } : {}),
    },
  }
  return { name: uid, version: revision, raw: Buffer.from(addressType.encode(addressType.fromObject(message)).finish()) }
}

function service(s: number): PushResource {
  const ns = `ns-${s % NAMESPACES}`
  const hostname = `svc-${s}.${ns}.svc.cluster.local`
  const message = { service: { name: `svc-${s}`, namespace: ns, hostname, addresses: [{ network: '', address: Buffer.from([10, 96, s >> 8, s & 0xff]) }], ports: [{ servicePort: 80, targetPort: 8080 }] } }
  return { name: `${ns}/${hostname}`, version: 'v1', raw: Buffer.from(addressType.encode(addressType.fromObject(message)).finish()) }
}

function policy(p: number): PushResource {
  const ns = `ns-${p % NAMESPACES}`
  const name = p < 20 ? `selected-${p}` : `policy-${p}`
  const message = {
    name, namespace: ns, scope: p < 20 ? 2 : 1, action: p % 3 === 0 ? 1 : 0,
    rules: [{ clauses: [
      { matches: [{ principals: [{ exact: `cluster.local/ns/${ns}/sa/sa-${p % 50}` }], notNamespaces: [{ prefix: 'test-' }] }] },
      { matches: [{ destinationPorts: [8080, 9090] }, { sourceIps: [{ address: Buffer.from([10, 0, 0, 0]), length: 8 }] }] },
    ] }],
  }
  return { name: `${ns}/${name}`, version: '', raw: Buffer.from(authorizationType.encode(authorizationType.fromObject(message)).finish()) }
}

interface Timing { wall: number; cpu: number }
const add = (a: Timing, b: Timing): Timing => ({ wall: a.wall + b.wall, cpu: a.cpu + b.cpu })

interface Session {
  client: WdsClient
  stream: FakeStream
  registry: ReturnType<typeof createWorkloadRegistry>
  /** Pushes and resolves with the milliseconds until the client applied it, and the CPU milliseconds this process spent meanwhile. */
  push(typeUrl: string, resources: PushResource[]): Promise<Timing>
}

async function session(istiod: Awaited<ReturnType<typeof startFakeIstiod>>, caPem: string): Promise<Session> {
  const registry = createWorkloadRegistry()
  const client = createWdsClient({ address: `https://localhost:${istiod.port}`, rootCert: caPem, token: false, registry, policies: createPolicyStore() })
  const waiting = new Map<string, (refused?: string) => void>()
  client.subscribe((event: WdsEvent) => {
    if (event.type === 'response') waiting.get(event.nonce)?.(event.rejected[0]?.reason)
  })
  // Ready once both types are pushed, which every session does before it closes.
  client.start().catch((err: unknown) => process.stderr.write(`bench/istio: ${(err as Error).message}\n`))
  const stream = await istiod.streams()
  await stream.next()
  await stream.next()
  return {
    client,
    stream,
    registry,
    async push(typeUrl, resources) {
      const start = performance.now()
      const cpu = process.cpuUsage()
      const nonce = stream.push(typeUrl, resources)
      const refused = await new Promise<string | undefined>((resolve) => waiting.set(nonce, resolve))
      const used = process.cpuUsage(cpu)
      const ms = { wall: performance.now() - start, cpu: (used.user + used.system) / 1000 }
      if (refused !== undefined) throw new Error(`the client refused a bench resource: ${refused}`)
      waiting.delete(nonce)
      await stream.next() // its ACK
      return ms
    },
  }
}

interface Row { name: string; summary: Summary; cpu?: Summary; unit: string; target?: string }

async function main(): Promise<void> {
  const pki = makeTestPki()
  const istiod = await startFakeIstiod({ key: pki.serverKeyPem, cert: pki.serverCertPem })
  const rows: Row[] = []
  try {
    const thousand = [...Array.from({ length: 100 }, (_, s) => service(s)), ...Array.from({ length: 1000 }, (_, i) => workload(i))]
    const policies = Array.from({ length: 100 }, (_, p) => policy(p))
    const full: Timing[] = []
    // The first rounds warm the JIT (decoders, conversion, registry) and are not counted.
    for (let r = -2; r < ROUNDS; r++) {
      const s = await session(istiod, pki.caPem)
      const ms = add(await s.push(ADDRESS, thousand), await s.push(AUTHORIZATION, policies))
      if (r >= 0) full.push(ms)
      await s.client.close()
    }
    rows.push({ name: 'push 1,000 workloads + 100 services, then 100 policies', ...timings(full), unit: 'ms', target: '< 100 ms' })

    gc()
    const heapBefore = process.memoryUsage().heapUsed
    const big = await session(istiod, pki.caPem)
    const tenThousand = [...Array.from({ length: 100 }, (_, s) => service(s)), ...Array.from({ length: 10_000 }, (_, i) => workload(i))]
    const fullTen = await big.push(ADDRESS, tenThousand)
    await big.push(AUTHORIZATION, policies)
    tenThousand.length = 0
    gc()
    const heapHeld = process.memoryUsage().heapUsed - heapBefore
    rows.push({ name: 'push 10,000 workloads + 100 services (once)', ...timings([fullTen]), unit: 'ms' })

    const updates: Timing[] = []
    for (let u = 0; u < UPDATES; u++) updates.push(await big.push(ADDRESS, [workload(u * 37 % 10_000, `v${u + 2}`)]))
    rows.push({ name: 'one workload update on 10,000 workloads', ...timings(updates), unit: 'ms', target: '< 5 ms' })
    rows.push({ name: 'heap held for 10,000 workloads + 100 policies', summary: summarize([heapHeld / 1024 / 1024]), unit: 'MiB' })
    rows.push({ name: '  per workload', summary: summarize([heapHeld / 10_000]), unit: 'bytes' })
    if (big.registry.snapshot().workloads.length !== 10_000) throw new Error('the registry does not hold the 10,000 workloads')
    await big.client.close()
  } finally {
    await istiod.close()
  }
  if (wantsJson) {
    process.stdout.write(`${JSON.stringify({ bench: 'istio', quick, rows }, null, 2)}\n`)
    return
  }
  process.stdout.write(`WDS config convergence (${quick ? 'quick' : 'full'} run; median ±spread over rounds, p99; CPU: this process's, server included)\n`)
  const cell = (s: Summary | undefined, digits: number): string => (s === undefined ? '' : formatSummary(s, digits))
  process.stdout.write(`${formatTable([
    ['measure', 'value', 'p99', 'CPU', 'unit', 'target'],
    ...rows.map((r) => [r.name, cell(r.summary, r.unit === 'bytes' ? 0 : 2), r.summary.runs > 1 ? r.summary.p99.toFixed(2) : '', cell(r.cpu, 2), r.unit, r.target ?? '']),
  ])}\n`)
}

function timings(list: readonly Timing[]): { summary: Summary; cpu: Summary } {
  return { summary: summarize(list.map((t) => t.wall)), cpu: summarize(list.map((t) => t.cpu)) }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench/istio: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  },
)
