/**
 * `npx tsx bench/identity.ts [--quick] [--json]`: what @ambientkit/identity
 * costs. SVID issuance per second (ECDSA P-256 and RSA-2048), X.509-SVID
 * verifications per second, and mutual-TLS handshakes per second with
 * `tlsServerOptions`/`tlsClientOptions` versus plain Node `tls` using the
 * same certificates and a reused SecureContext on both sides (target: within
 * 10%). Handshakes alternate one by one between the variants so machine noise
 * spreads over both. Loopback only, one handshake at a time, client and server
 * in this process.
 */
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import tls from 'node:tls'
import {
  attachTlsServer, createCertificateAuthority, createIdentityManager, createLocalCaSource, SpiffeId,
  tlsClientOptions, tlsServerOptions, verifyX509Svid, type KeyType,
} from '@ambientkit/identity'
import { formatSummary, summarize, type Summary } from './lib/stats'
import { formatTable, wantsJson } from './lib/table'

const quick = process.argv.includes('--quick')
const ROUNDS = quick ? 2 : 5
const ROUND_MS = quick ? 300 : 1500

const serverId = SpiffeId.fromServiceAccount('bench.local', 'bench', 'server')
const clientId = SpiffeId.fromServiceAccount('bench.local', 'bench', 'client')

/** Runs `op` repeatedly for `ms` and returns operations per second. */
async function rate(ms: number, op: () => Promise<unknown> | unknown): Promise<number> {
  const start = performance.now()
  let n = 0
  while (performance.now() - start < ms) {
    await op()
    n++
  }
  return n / ((performance.now() - start) / 1000)
}

interface Row { name: string; summary: Summary; unit: string }

async function issuance(keyType: KeyType): Promise<Row> {
  const ca = await createCertificateAuthority({ trustDomain: 'bench.local', keyType })
  const runs: number[] = []
  for (let r = 0; r < ROUNDS; r++) runs.push(await rate(ROUND_MS, () => ca.issue(clientId, { ttlSeconds: 3600 })))
  return { name: `issue SVID (${keyType})`, summary: summarize(runs), unit: 'SVIDs/s' }
}

async function verification(keyType: KeyType): Promise<Row[]> {
  // The CA's key type decides the signature to check; leaves get ECDSA keys so the pool is quick to issue.
  const ca = await createCertificateAuthority({ trustDomain: 'bench.local', keyType })
  const perRound = quick ? 100 : 300
  const pool = await Promise.all(Array.from({ length: perRound * ROUNDS }, (_, i) =>
    ca.issue(SpiffeId.fromServiceAccount('bench.local', 'bench', `w${i}`), { keyType: 'ecdsa-p256' })))
  const cold: number[] = []
  const warm: number[] = []
  for (let r = 0; r < ROUNDS; r++) {
    // Chains never seen before: parse, checks, signature.
    const slice = pool.slice(r * perRound, (r + 1) * perRound)
    const start = performance.now()
    for (const svid of slice) verifyX509Svid(svid.certificateChainPem, ca.bundle)
    cold.push(perRound / ((performance.now() - start) / 1000))
    // The same chain again (a peer reconnecting): the verified-chain cache answers.
    warm.push(await rate(ROUND_MS / 3, () => verifyX509Svid(slice[0]!.certificateChainPem, ca.bundle)))
  }
  return [
    { name: `verify SVID, new chain (${keyType} CA)`, summary: summarize(cold), unit: 'verifications/s' },
    { name: `verify SVID, seen chain (${keyType} CA)`, summary: summarize(warm), unit: 'verifications/s' },
  ]
}

/** One full mutual handshake: connect, both sides verified, one byte from the server, close. */
function handshake(port: number, options: tls.ConnectionOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ ...options, host: '127.0.0.1', port })
    socket.once('data', () => {
      socket.destroy()
      resolve()
    })
    socket.once('error', reject)
  })
}

async function handshakes(keyType: KeyType): Promise<Row[]> {
  const ca = await createCertificateAuthority({ trustDomain: 'bench.local', keyType })
  const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
  const serverSvid = await manager.get(serverId)
  const clientSvid = await manager.get(clientId)
  const caPem = ca.bundle.x509AuthoritiesPem()
  const greet = (socket: tls.TLSSocket): void => {
    socket.end('x')
  }

  // Plain Node tls with the very same certificates, contexts built once.
  const plainServer = tls.createServer({ key: serverSvid.privateKeyPem, cert: serverSvid.certificateChainPem, ca: caPem, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, greet)
  const plainClientContext = tls.createSecureContext({ key: clientSvid.privateKeyPem, cert: clientSvid.certificateChainPem, ca: caPem, minVersion: 'TLSv1.3' })
  const plainOptions: tls.ConnectionOptions = { secureContext: plainClientContext, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined }

  const serverOptions = await tlsServerOptions({ manager, id: serverId })
  const meshServer = tls.createServer(serverOptions, greet)
  const binding = attachTlsServer(meshServer, serverOptions)

  for (const server of [plainServer, meshServer]) {
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
  }
  const plainPort = (plainServer.address() as AddressInfo).port
  const meshPort = (meshServer.address() as AddressInfo).port
  const plain: number[] = []
  const mesh: number[] = []
  const pairs = quick ? 50 : 200
  const meshOnce = async (): Promise<void> => {
    // tlsClientOptions is called per connection, as a client that follows rotation does.
    await handshake(meshPort, await tlsClientOptions({ manager, id: clientId, expectedPeers: [serverId] }))
  }
  try {
    // Warm both paths (JIT, session state) before measuring.
    for (let i = 0; i < 20; i++) {
      await handshake(plainPort, plainOptions)
      await meshOnce()
    }
    for (let r = 0; r < ROUNDS; r++) {
      // Alternating one handshake of each keeps a noisy neighbour from favouring either side.
      let plainMs = 0
      let meshMs = 0
      for (let i = 0; i < pairs; i++) {
        let t = performance.now()
        await handshake(plainPort, plainOptions)
        plainMs += performance.now() - t
        t = performance.now()
        await meshOnce()
        meshMs += performance.now() - t
      }
      plain.push(pairs / (plainMs / 1000))
      mesh.push(pairs / (meshMs / 1000))
    }
  } finally {
    binding.close()
    await Promise.all([plainServer, meshServer].map((s) => new Promise((resolve) => s.close(resolve))))
    await manager.close()
  }
  return [
    { name: `mTLS handshake, plain node tls (${keyType})`, summary: summarize(plain), unit: 'handshakes/s' },
    { name: `mTLS handshake, ambientkit (${keyType})`, summary: summarize(mesh), unit: 'handshakes/s' },
  ]
}

const rows: Row[] = []
for (const keyType of ['ecdsa-p256', 'rsa-2048'] as const) {
  rows.push(await issuance(keyType))
  rows.push(...(await verification(keyType)))
  rows.push(...(await handshakes(keyType)))
}
const ratio = (keyType: KeyType): number => {
  const plain = rows.find((r) => r.name === `mTLS handshake, plain node tls (${keyType})`)!.summary.median
  const mesh = rows.find((r) => r.name === `mTLS handshake, ambientkit (${keyType})`)!.summary.median
  return mesh / plain
}
const ratios = { 'ecdsa-p256': ratio('ecdsa-p256'), 'rsa-2048': ratio('rsa-2048') }

if (wantsJson) {
  process.stdout.write(`${JSON.stringify({ rounds: ROUNDS, roundMs: ROUND_MS, results: rows, handshakeRatioVsPlain: ratios }, null, 2)}\n`)
} else {
  process.stdout.write(`${formatTable([
    ['measurement', 'median ±spread', 'unit', 'runs'],
    ...rows.map((r) => [r.name, formatSummary(r.summary, 0), r.unit, String(r.summary.runs)]),
  ])}\n\n`)
  for (const [keyType, value] of Object.entries(ratios)) {
    process.stdout.write(`handshakes ambientkit / plain (${keyType}): ${(value * 100).toFixed(1)}% (target >= 90%)\n`)
  }
}
