/**
 * HBONE on loopback: single-stream throughput through an HBONE tunnel
 * (several flow-control settings on Node's TLS and HTTP/2, and the native
 * data path the workload proxy uses by default) against a plain TCP relay
 * and a plain TLS relay, and tunnels per second on a pooled session.
 *
 * The server side (sink, relays, HBONE servers) runs in a child process so
 * each end has a core, as two proxies on two nodes would. Every variant has
 * the same shape — client → relay → sink — and the variants are interleaved
 * round by round so machine noise spreads over all of them. Besides the
 * rate, each run reports the CPU seconds both processes spent per GiB (all
 * their threads, the native path's data-path threads included): on a shared
 * machine that cost is steadier than the wall-clock rate.
 *
 * Run: `npx tsx --tsconfig tsconfig.json bench/hbone.ts [--quick] [--json]`.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { connect as netConnect, createServer, type AddressInfo, type Socket } from 'node:net'
import { createInterface } from 'node:readline'
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls'
import { fileURLToPath } from 'node:url'
import {
  attachTlsServer,
  createCertificateAuthority,
  createIdentityManager,
  createLocalCaSource,
  loadCertificateAuthority,
  tlsClientOptions,
  tlsServerOptions,
  type IdentityManager,
} from '@ambientkit/identity'
import { createHboneClient, createHboneServer, createNativeTransport, nativeHboneUnavailable, type HboneClient, type HboneWindows, type TransportClient } from '@ambientkit/proxy'
import { boundAddress, ownNetnsSockets } from '@ambientkit/redirect'
import { formatSummary, summarize, type Summary } from './lib/stats'
import { formatTable, wantsJson } from './lib/table'

const TRUST_DOMAIN = 'cluster.local'
const SERVER_ID = `spiffe://${TRUST_DOMAIN}/ns/bench/sa/server`
const CLIENT_ID = `spiffe://${TRUST_DOMAIN}/ns/bench/sa/client`
const MiB = 1024 * 1024
const quick = process.argv.includes('--quick')
const SETTINGS = quick
  ? { bytes: 64 * MiB, rounds: 2, sequentialTunnels: 300, concurrentTunnels: 600, concurrency: 16, freshSessions: 30 }
  : { bytes: 512 * MiB, rounds: 5, sequentialTunnels: 3000, concurrentTunnels: 6000, concurrency: 16, freshSessions: 200 }

/** The HBONE flow-control settings compared. */
const HBONE_VARIANTS: ReadonlyArray<{ key: string; label: string; windows: HboneWindows }> = [
  { key: 'hbone', label: 'HBONE, 4/16 MiB windows, 16 KiB frames (default)', windows: { stream: 4 * MiB, connection: 16 * MiB, maxFrameSize: 16 * 1024 } },
  { key: 'hbone-1m-frames', label: 'HBONE, 4/16 MiB windows, 1 MiB frames (ztunnel)', windows: { stream: 4 * MiB, connection: 16 * MiB, maxFrameSize: MiB } },
  { key: 'hbone-h2-defaults', label: 'HBONE, 64 KiB windows, 16 KiB frames (HTTP/2 defaults)', windows: { stream: 65_535, connection: 65_535, maxFrameSize: 16 * 1024 } },
]

/** The native data path with the workload proxy's defaults (4/16 MiB windows, 16 KiB frames); absent when the addon is not built. */
const NATIVE = { key: 'hbone-native', label: 'HBONE, native data path (default windows)' }

interface ChildPorts {
  sink: number
  tcpRelay: number
  tlsRelay: number
  hbone: Record<string, number>
}

const log = (message: string): void => {
  process.stderr.write(`bench/hbone: ${message}\n`)
}

function managerFor(caPem: { certificateChainPem: string; privateKeyPem: string }): IdentityManager {
  return createIdentityManager({ source: createLocalCaSource(loadCertificateAuthority(caPem)), ttlSeconds: 3600 })
}

/** Relays one accepted socket to the sink, keeping half-close. */
function relayToSink(socket: Socket, sinkPort: number): void {
  const upstream = netConnect({ host: '127.0.0.1', port: sinkPort, allowHalfOpen: true })
  socket.pipe(upstream)
  upstream.pipe(socket)
  upstream.on('error', () => socket.destroy())
  socket.on('error', () => upstream.destroy())
}

/** The server side: a sink that counts bytes and answers the count at FIN, and the relays in front of it. */
async function child(): Promise<void> {
  const manager = managerFor(JSON.parse(process.env.BENCH_HBONE_CA!) as { certificateChainPem: string; privateKeyPem: string })
  const sink = createServer({ allowHalfOpen: true }, (socket) => {
    let count = 0
    socket.on('data', (chunk: Buffer) => {
      count += chunk.length
    })
    socket.on('end', () => {
      const reply = Buffer.alloc(8)
      reply.writeBigUInt64BE(BigInt(count))
      socket.end(reply)
    })
    socket.on('error', () => {})
  })
  sink.listen(0, '127.0.0.1')
  await once(sink, 'listening')
  const sinkPort = (sink.address() as AddressInfo).port

  const tcpRelay = createServer({ allowHalfOpen: true }, (socket) => relayToSink(socket, sinkPort))
  tcpRelay.listen(0, '127.0.0.1')
  await once(tcpRelay, 'listening')

  const tlsOptions = await tlsServerOptions({ manager, id: SERVER_ID })
  const tlsRelay = createTlsServer({ ...tlsOptions, allowHalfOpen: true }, (socket) => relayToSink(socket, sinkPort))
  attachTlsServer(tlsRelay, tlsOptions)
  tlsRelay.listen(0, '127.0.0.1')
  await once(tlsRelay, 'listening')

  const hbone: Record<string, number> = {}
  for (const variant of HBONE_VARIANTS) {
    const server = createHboneServer({
      tls: await tlsServerOptions({ manager, id: SERVER_ID }),
      decide: () => ({ action: 'serve' }),
      windows: variant.windows,
    })
    hbone[variant.key] = (await server.listen(0, '127.0.0.1')).port
  }
  if (nativeHboneUnavailable() === undefined) {
    // Upstream and session sockets as the workload proxy makes them (connectFd), here in this process's own namespace.
    const sockets = ownNetnsSockets()
    const server = await createNativeTransport().createServer({
      identities: manager,
      identity: SERVER_ID,
      decide: () => ({ action: 'serve' }),
      connect: (destination, { signal }) => sockets.connectFd({ host: destination.address, port: destination.port, signal }),
    })
    // As the workload proxy's 15008: accepted as descriptors, which the server takes over.
    const listening = sockets.listenFd({ host: '127.0.0.1', port: 0 })
    sockets.accept(listening, ({ fd, remote }) => server.handle(fd, remote))
    hbone[NATIVE.key] = boundAddress(listening).port
  }
  const ports: ChildPorts = { sink: sinkPort, tcpRelay: (tcpRelay.address() as AddressInfo).port, tlsRelay: (tlsRelay.address() as AddressInfo).port, hbone }
  process.stdout.write(`${JSON.stringify(ports)}\n`)
  // Each line on stdin asks for this process's CPU time so far; the parent closes stdin when it is done (or dies).
  createInterface({ input: process.stdin }).on('line', () => {
    const { user, system } = process.cpuUsage()
    process.stdout.write(`${(user + system) / 1e6}\n`)
  })
  process.stdin.on('end', () => process.exit(0))
}

const CHUNK = Buffer.alloc(64 * 1024, 0x61)

/** Writes `bytes` into `stream` with backpressure, half-closes, and resolves once the sink's count came back. */
async function pushThrough(stream: NodeJS.ReadWriteStream, bytes: number): Promise<number> {
  const started = performance.now()
  const reply = new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = []
    stream.on('data', (chunk: Buffer) => chunks.push(chunk))
    stream.once('end', () => resolve(Buffer.concat(chunks)))
    stream.once('error', reject)
  })
  let left = bytes
  while (left > 0) {
    const chunk = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left)
    left -= chunk.length
    if (!stream.write(chunk)) await once(stream, 'drain')
  }
  stream.end()
  const count = (await reply).readBigUInt64BE()
  const seconds = (performance.now() - started) / 1000
  if (count !== BigInt(bytes)) throw new Error(`sink counted ${count} bytes, expected ${bytes}`)
  return (bytes * 8) / seconds / 1e9
}

async function connected<T extends Socket>(socket: T, event: 'connect' | 'secureConnect'): Promise<T> {
  await once(socket, event)
  return socket
}

async function main(): Promise<void> {
  const ca = await createCertificateAuthority({ trustDomain: TRUST_DOMAIN })
  const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
  const server = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), '--child'], {
    env: { ...process.env, BENCH_HBONE_CA: JSON.stringify(ca.save()) },
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const clients: Array<HboneClient | TransportClient> = []
  // The apps' side of native tunnels: their accepted ends, as descriptors the client hands to the addon.
  // Accepted ends are matched to their app connection by port: tunnels open concurrently.
  const sockets = ownNetnsSockets()
  const accepted = new Map<number, number>()
  const waiting = new Map<number, (end: number) => void>()
  const appsFd = sockets.listenFd({ host: '127.0.0.1', port: 0 })
  const appsPort = boundAddress(appsFd).port
  const apps = sockets.accept(appsFd, ({ fd, remote }) => {
    const take = waiting.get(remote.port)
    if (take === undefined) accepted.set(remote.port, fd)
    else take(fd)
  })
  try {
    const lines = createInterface({ input: server.stdout! })
    const [line] = (await once(lines, 'line')) as [string]
    const ports = JSON.parse(line) as ChildPorts
    /** CPU seconds used so far by both processes: the cost of a run, which other load on the machine barely changes. */
    const cpuSeconds = async (): Promise<number> => {
      const reply = once(lines, 'line') as Promise<[string]>
      server.stdin!.write('cpu\n')
      const { user, system } = process.cpuUsage()
      return Number((await reply)[0]) + (user + system) / 1e6
    }
    const tls = (identity: string | undefined, { expectedIdentities, signal }: { expectedIdentities: readonly string[]; signal: AbortSignal }) =>
      tlsClientOptions({ manager, id: identity ?? CLIENT_ID, expectedPeers: expectedIdentities, signal })
    const hboneClients = Object.fromEntries(
      HBONE_VARIANTS.map((variant) => {
        const client = createHboneClient({ tls, windows: variant.windows })
        clients.push(client)
        return [variant.key, client]
      }),
    )
    const target = `127.0.0.1:${ports.sink}`
    const native = ports.hbone[NATIVE.key] === undefined
      ? undefined
      : createNativeTransport().createClient({ identities: manager, connectSession: (address, { signal }) => sockets.connectFd({ host: address.address, port: address.port, signal }) })
    if (native !== undefined) clients.push(native)
    else log('the native addon is not built: its rows are left out (npm run native -w @ambientkit/proxy)')
    /** An app connection carried by a native tunnel to the sink: the app's end, once the server answered 200. */
    const nativeTunnel = async (client: TransportClient): Promise<Socket> => {
      const app = await connected(netConnect({ host: '127.0.0.1', port: appsPort, allowHalfOpen: true }), 'connect')
      const port = app.localPort!
      const end = accepted.get(port) ?? (await new Promise<number>((resolve) => waiting.set(port, resolve)))
      accepted.delete(port)
      waiting.delete(port)
      await client.open(end, { address: '127.0.0.1', port: ports.sink, family: 4 }, {
        identity: CLIENT_ID,
        expectedIdentities: [SERVER_ID],
        via: { address: '127.0.0.1', port: ports.hbone[NATIVE.key]!, family: 4 },
      })
      return app
    }
    const throughputVariants: ReadonlyArray<{ key: string; label: string; open: () => Promise<NodeJS.ReadWriteStream> }> = [
      { key: 'tcp', label: 'plain TCP relay', open: () => connected(netConnect({ host: '127.0.0.1', port: ports.tcpRelay, allowHalfOpen: true }), 'connect') },
      {
        key: 'tls',
        label: 'plain TLS 1.3 relay (mutual, SVIDs)',
        open: async () =>
          connected(
            // ConnectionOptions has no allowHalfOpen; the socket's flag is set right after.
            Object.assign(tlsConnect({ ...(await tls(undefined, { expectedIdentities: [SERVER_ID], signal: new AbortController().signal })), host: '127.0.0.1', port: ports.tlsRelay }), { allowHalfOpen: true }),
            'secureConnect',
          ),
      },
      ...HBONE_VARIANTS.map((variant) => ({
        key: variant.key,
        label: variant.label,
        open: () => hboneClients[variant.key]!.connect(target, { via: `127.0.0.1:${ports.hbone[variant.key]}`, expectedIdentities: [SERVER_ID] }),
      })),
      ...(native === undefined ? [] : [{ ...NATIVE, open: () => nativeTunnel(native) }]),
    ]

    const samples = new Map<string, { gbps: number[]; cpu: number[] }>(throughputVariants.map((v) => [v.key, { gbps: [], cpu: [] }]))
    for (let round = 0; round < SETTINGS.rounds; round++) {
      for (const variant of throughputVariants) {
        log(`round ${round + 1}/${SETTINGS.rounds}: ${variant.label}`)
        const stream = await variant.open()
        const cpuBefore = await cpuSeconds()
        const gbps = await pushThrough(stream, SETTINGS.bytes)
        const cpu = (await cpuSeconds()) - cpuBefore
        samples.get(variant.key)!.gbps.push(gbps)
        samples.get(variant.key)!.cpu.push(cpu / (SETTINGS.bytes / (1024 * MiB)))
      }
    }
    const throughput = throughputVariants.map((v) => ({
      key: v.key,
      label: v.label,
      gbitPerSecond: summarize(samples.get(v.key)!.gbps),
      cpuSecondsPerGiB: summarize(samples.get(v.key)!.cpu),
    }))

    log('tunnels per second')
    const pooled = hboneClients.hbone!
    const via = `127.0.0.1:${ports.hbone.hbone}`
    const oneTunnel = async (client: HboneClient): Promise<void> => {
      const tunnel = await client.connect(target, { via, expectedIdentities: [SERVER_ID] })
      tunnel.end()
      tunnel.resume()
      await once(tunnel, 'close')
    }
    const oneNativeTunnel = async (client: TransportClient): Promise<void> => {
      const app = await nativeTunnel(client)
      app.end()
      app.resume()
      await once(app, 'close')
    }
    const rate = async (count: number, concurrency: number, run: () => Promise<void>): Promise<number> => {
      let next = 0
      const started = performance.now()
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next++ < count) await run()
        }),
      )
      return count / ((performance.now() - started) / 1000)
    }
    await rate(50, 1, () => oneTunnel(pooled))
    const tunnelRates: Array<{ key: string; label: string; perSecond: Summary }> = []
    const measure = async (key: string, label: string, once: () => Promise<number>): Promise<void> => {
      const values: number[] = []
      for (let round = 0; round < SETTINGS.rounds; round++) values.push(await once())
      tunnelRates.push({ key, label, perSecond: summarize(values) })
    }
    await measure('pooled-sequential', 'pooled session, one tunnel at a time', () => rate(SETTINGS.sequentialTunnels, 1, () => oneTunnel(pooled)))
    await measure('pooled-concurrent', `pooled sessions, ${SETTINGS.concurrency} tunnels in flight`, () =>
      rate(SETTINGS.concurrentTunnels, SETTINGS.concurrency, () => oneTunnel(pooled)),
    )
    if (native !== undefined) {
      await rate(50, 1, () => oneNativeTunnel(native))
      await measure('native-sequential', 'native: pooled session, one tunnel at a time (each with its app connection)', () => rate(SETTINGS.sequentialTunnels, 1, () => oneNativeTunnel(native)))
      await measure('native-concurrent', `native: pooled sessions, ${SETTINGS.concurrency} tunnels in flight (each with its app connection)`, () =>
        rate(SETTINGS.concurrentTunnels, SETTINGS.concurrency, () => oneNativeTunnel(native)),
      )
    }
    await measure('fresh-session', 'a new session (TCP + mTLS + h2) per tunnel', () =>
      rate(SETTINGS.freshSessions, 1, async () => {
        const client = createHboneClient({ tls })
        try {
          await oneTunnel(client)
        } finally {
          await client.close()
        }
      }),
    )

    if (wantsJson) {
      process.stdout.write(`${JSON.stringify({ bench: 'hbone', quick, settings: SETTINGS, throughput, tunnels: tunnelRates }, null, 2)}\n`)
      return
    }
    console.log(`HBONE on loopback, single stream, ${SETTINGS.bytes / MiB} MiB upload per run, ${SETTINGS.rounds} runs (median ±half-range)`)
    console.log(
      formatTable([
        ['path', 'Gbit/s', 'CPU s/GiB (both ends)'],
        ...throughput.map((t) => [t.label, formatSummary(t.gbitPerSecond, 2), formatSummary(t.cpuSecondsPerGiB, 2)]),
      ]),
    )
    console.log('')
    console.log(formatTable([['tunnels (open, half-close, close)', 'per second'], ...tunnelRates.map((t) => [t.label, formatSummary(t.perSecond, 0)])]))
  } finally {
    await Promise.all(clients.map((client) => client.close()))
    apps.close()
    await manager.close()
    server.stdin!.end()
    if (server.exitCode === null) await once(server, 'exit')
  }
}

if (process.argv.includes('--child')) await child()
else await main()
