// Child process of hbone-h2.fuzz.test.ts: one HBONE server (Node's or the
// native data path, AK_DATA_PATH) in its own process, so that a crash is
// seen as an exit and never takes the test runner down. The CA comes as PEM
// through the environment. Prints {"port","echoPort","stallPort"} once
// listening; answers each line on stdin with a JSON line: "stats" its
// counters, "requests" what decide() saw since the last time.
//
// Destinations: the echo server's port is served; STALL_PORT is served by
// a connector that never connects (an upstream that hangs, until the stream
// or the server goes away); port 401 is denied; anything else is unknown.
import { createInterface } from 'node:readline'
import { abortError } from '@ambientkit/core'
import { createIdentityManager, createLocalCaSource, loadCertificateAuthority } from '@ambientkit/identity'
import { createNativeTransport, createNodeTransport, type HboneDecision, type HboneRequest } from '@ambientkit/proxy'
import { startEchoServer } from '../interop/support'
import { listenDescriptors, sockets } from './descriptors'

const STALL_PORT = 9
const dataPath = process.env.AK_DATA_PATH === 'native' ? 'native' : 'node'
const maxConcurrentStreams = Number(process.env.AK_MAX_STREAMS ?? '100')
const ca = loadCertificateAuthority({ certificateChainPem: process.env.AK_CA_CERT!, privateKeyPem: process.env.AK_CA_KEY! })
const manager = createIdentityManager({ source: createLocalCaSource(ca), ttlSeconds: 3600 })
const serverId = process.env.AK_SERVER_ID!

const echo = await startEchoServer()
const echoPort = echo.port

/** What decide() saw of the last requests, for the test to compare across data paths. */
const seen: Array<Pick<HboneRequest, 'destination' | 'headers' | 'baggage' | 'traceparent' | 'forwardedFor'>> = []
const decide = ({ destination, headers, baggage, traceparent, forwardedFor }: HboneRequest): HboneDecision => {
  seen.push({ destination, headers, baggage, traceparent, forwardedFor })
  if (seen.length > 100) seen.shift()
  if (destination.port === echoPort || destination.port === STALL_PORT) return { action: 'serve' }
  if (destination.port === 401) return { action: 'deny', reason: 'fuzz' }
  return { action: 'unknown', reason: 'fuzz' }
}

/** Never connects: waits for the abort of the stream, the timeout or the server. */
const stall = (signal: AbortSignal): Promise<never> =>
  new Promise((_, reject) => signal.addEventListener('abort', () => reject(abortError(signal, 'stalled upstream')), { once: true }))

const server = await startServer()

async function startServer(): Promise<{ port: number; stats(): unknown }> {
  const transport = dataPath === 'native' ? createNativeTransport() : createNodeTransport()
  const hbone = await transport.createServer({
    identities: manager,
    identity: serverId,
    decide,
    maxConcurrentStreams,
    connect: (destination, { signal }) => (destination.port === STALL_PORT ? stall(signal) : sockets.connectFd({ host: '127.0.0.1', port: destination.port, signal })),
  })
  const listener = listenDescriptors((fd, remote) => hbone.handle(fd, remote))
  return { port: listener.address.port, stats: () => hbone.stats() }
}

const gc = (globalThis as { gc?: () => void }).gc
const commands = createInterface({ input: process.stdin })
commands.on('line', (command) => {
  if (command === 'requests') {
    process.stdout.write(`${JSON.stringify(seen.splice(0))}\n`)
    return
  }
  gc?.()
  process.stdout.write(`${JSON.stringify({ ...(server.stats() as object), rss: process.memoryUsage().rss, echoSockets: echo.sockets.size })}\n`)
})
// The test runner went away: so does the server.
commands.on('close', () => process.exit(0))
process.stdout.write(`${JSON.stringify({ port: server.port, echoPort, stallPort: STALL_PORT })}\n`)
