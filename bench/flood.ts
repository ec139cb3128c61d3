/**
 * HBONE under a handshake flood: the rate and latency of legitimate new
 * connections (each a fresh session: TCP, mutual TLS, CONNECT, one byte
 * echoed, close) to an HBONE server, with and without a flood of plain TCP
 * connections that never start TLS running against the same server from
 * another source address (127.0.0.2). The flood runs in a child process that
 * keeps FLOOD_CONNECTIONS open, opening a new one whenever one is closed,
 * as the attack of issue 15 did; the server sheds what is above its limits
 * (maxPendingHandshakesPerSource, handshakeTimeout) and the table says how
 * many it shed. Both data paths (the native one when its addon is built).
 * The server and the legitimate client share this process, the flood has
 * its own: on a two-core machine, the flood's CPU is not charged to them.
 *
 * Run: `npx tsx --tsconfig tsconfig.json bench/flood.ts [--quick] [--json]`.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { connect as netConnect, createServer, type AddressInfo, type Socket } from 'node:net'
import { createCertificateAuthority, createIdentityManager, createLocalCaSource } from '@ambientkit/identity'
import { createNativeTransport, createNodeTransport, nativeHboneUnavailable, type HboneTransport } from '@ambientkit/proxy'
import { boundAddress, ownNetnsSockets } from '@ambientkit/redirect'
import { summarize } from './lib/stats'
import { formatTable, wantsJson } from './lib/table'

const TRUST_DOMAIN = 'cluster.local'
const SERVER_ID = `spiffe://${TRUST_DOMAIN}/ns/bench/sa/server`
const CLIENT_ID = `spiffe://${TRUST_DOMAIN}/ns/bench/sa/client`
const quick = process.argv.includes('--quick')
const CONNECTIONS = quick ? 100 : 1000
const FLOOD_CONNECTIONS = quick ? 500 : 2000

/** The flood: keeps `count` connections from 127.0.0.2 open to the port, never sending a byte, until its stdin closes. */
const FLOOD_SCRIPT = `
const net = require('node:net')
const [port, count] = process.argv.slice(1).map(Number)
let open = 0
const fill = () => {
  while (open < count) {
    open++
    const socket = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.2' })
    socket.on('error', () => {})
    socket.on('close', () => { open--; setImmediate(fill) })
  }
}
fill()
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
`

interface Row {
  dataPath: string
  flood: boolean
  connectionsPerSecond: number
  p50Ms: number
  p99Ms: number
  shed: number
  timedOut: number
}

const log = (message: string): void => void process.stderr.write(`bench(flood): ${message}\n`)

async function main(): Promise<void> {
  const ca = await createCertificateAuthority({ trustDomain: TRUST_DOMAIN })
  const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
  const sockets = ownNetnsSockets()
  const echo = createServer((socket) => {
    socket.on('error', () => {})
    socket.pipe(socket)
  })
  echo.listen(0, '127.0.0.1')
  await once(echo, 'listening')
  const echoPort = (echo.address() as AddressInfo).port
  // The apps' side: their accepted ends, as descriptors handed to the client, matched by port.
  const accepted = new Map<number, number>()
  const waiting = new Map<number, (fd: number) => void>()
  const appsFd = sockets.listenFd({ host: '127.0.0.1', port: 0 })
  const apps = sockets.accept(appsFd, ({ fd, remote }) => {
    const take = waiting.get(remote.port)
    if (take === undefined) accepted.set(remote.port, fd)
    else take(fd)
  })
  const appConnection = async (): Promise<{ app: Socket; fd: number }> => {
    const app = netConnect({ host: '127.0.0.1', port: boundAddress(appsFd).port })
    app.on('error', () => {})
    await once(app, 'connect')
    const port = app.localPort!
    const early = accepted.get(port)
    accepted.delete(port)
    const fd = early ?? (await new Promise<number>((resolve) => waiting.set(port, resolve)))
    waiting.delete(port)
    return { app, fd }
  }

  const transports: Array<[string, HboneTransport]> = [['node', createNodeTransport()]]
  if (nativeHboneUnavailable() === undefined) transports.push(['native', createNativeTransport()])
  else log('the native addon is not built: its rows are left out (npm run native -w @ambientkit/proxy)')

  const rows: Row[] = []
  try {
    for (const [dataPath, transport] of transports) {
      let shed = 0
      let timedOut = 0
      const server = await transport.createServer({
        identities: manager,
        identity: SERVER_ID,
        decide: () => ({ action: 'serve' }),
        connect: (destination, { signal }) => sockets.connectFd({ host: destination.address, port: destination.port, signal }),
        onHandshakeFailure: ({ reason }) => {
          if (reason === 'shed') shed++
          else if (reason === 'timeout') timedOut++
        },
      })
      const listening = sockets.listenFd({ host: '127.0.0.1', port: 0, backlog: 4096 })
      const acceptor = sockets.accept(listening, ({ fd, remote }) => server.handle(fd, remote))
      const via = boundAddress(listening)
      try {
        for (const flood of [false, true]) {
          let child: ChildProcess | undefined
          if (flood) {
            child = spawn(process.execPath, ['-e', FLOOD_SCRIPT, String(via.port), String(FLOOD_CONNECTIONS)], { stdio: ['pipe', 'ignore', 'inherit'] })
            // Let the flood reach its size before measuring.
            await new Promise((resolve) => setTimeout(resolve, 1000))
          }
          const [shedBefore, timedOutBefore] = [shed, timedOut]
          const latencies: number[] = []
          const started = performance.now()
          for (let i = 0; i < CONNECTIONS; i++) {
            // A fresh client: a fresh session, so every connection pays the handshake the flood competes with.
            const client = transport.createClient({ identities: manager, connectSession: (address, { signal }) => sockets.connectFd({ host: address.address, port: address.port, signal }) })
            const begin = performance.now()
            const { app, fd } = await appConnection()
            await client.open(fd, { address: '127.0.0.1', port: echoPort, family: 4 }, { identity: CLIENT_ID, expectedIdentities: [SERVER_ID], via })
            app.end('x')
            await once(app, 'data')
            latencies.push(performance.now() - begin)
            app.destroy()
            await client.close()
          }
          const elapsed = (performance.now() - started) / 1000
          if (child !== undefined) {
            child.stdin!.end()
            await once(child, 'exit')
          }
          const summary = summarize(latencies)
          rows.push({ dataPath, flood, connectionsPerSecond: CONNECTIONS / elapsed, p50Ms: summary.median, p99Ms: summary.p99, shed: shed - shedBefore, timedOut: timedOut - timedOutBefore })
          log(`${dataPath}, ${flood ? 'flood' : 'no flood'}: done`)
        }
      } finally {
        acceptor.close()
        await server.close()
      }
    }
  } finally {
    apps.close()
    echo.close()
    await manager.close()
  }

  if (wantsJson) {
    process.stdout.write(`${JSON.stringify({ connections: CONNECTIONS, floodConnections: FLOOD_CONNECTIONS, rows })}\n`)
    return
  }
  process.stdout.write(`Legitimate new HBONE connections (fresh session each, sequential, ${CONNECTIONS} per row), with and without ${FLOOD_CONNECTIONS} never-handshaking connections held open from another source\n\n`)
  process.stdout.write(
    formatTable([
      ['data path', 'flood', 'connections/s', 'p50 ms', 'p99 ms', 'flood shed', 'flood timed out'],
      ...rows.map((row) => [row.dataPath, row.flood ? 'yes' : 'no', row.connectionsPerSecond.toFixed(0), row.p50Ms.toFixed(2), row.p99Ms.toFixed(2), String(row.shed), String(row.timedOut)]),
    ]),
  )
}

main().catch((err: unknown) => {
  process.stderr.write(`bench(flood): ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
