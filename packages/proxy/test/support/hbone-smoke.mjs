// A small HBONE exchange through a native HBONE addon, in plain JavaScript
// with nothing but Node's own modules, so that any Node binary runs it (each
// Node line, an arm64 Node under qemu, a scratch project's installed
// package): a server session and a client session over loopback, one
// CONNECT spliced to an echo server, 1 MiB there and back, half-close both
// ways. Prints one JSON line ({ ok, bytes, versions }) and exits 0, or exits
// 1 with the reason.
//
//   node hbone-smoke.mjs ADDON.node MATERIAL.json
// MATERIAL.json: { "server": { "chain", "key" }, "client": { "chain", "key" }, "roots" } (PEM).

import crypto from 'node:crypto'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import net from 'node:net'

const [addonPath, materialPath] = process.argv.slice(2)
const material = JSON.parse(readFileSync(materialPath, 'utf8'))
const a = createRequire(import.meta.url)(addonPath)
const events = a.constants.events
const settings = [4 << 20, 16 << 20, 16384, 100]
const handOver = (socket) => {
  const fd = a.dupFd(socket._handle.fd)
  socket.destroy()
  return fd
}
const fail = (reason) => {
  process.stderr.write(`hbone-smoke: ${reason}\n`)
  process.exit(1)
}
setTimeout(() => fail('timed out'), 20_000).unref()

;(async () => {
  const serverCtx = a.createContext(true, material.server.chain, material.server.key, material.roots)
  const clientCtx = a.createContext(false, material.client.chain, material.client.key, material.roots)
  const echo = net.createServer({ allowHalfOpen: true }, (socket) => socket.pipe(socket)).listen(0, '127.0.0.1')
  await once(echo, 'listening')
  const hbone = net.createServer({ pauseOnConnect: true }, (socket) => {
    const session = a.serverSession(serverCtx, handOver(socket), settings, (event, id, method, authority) => {
      if (event !== events.Request) return undefined
      if (method !== 'CONNECT') return void a.respond(session, id, 405)
      const upstream = net.connect(Number(authority.split(':')[1]), '127.0.0.1', () => a.splice(session, id, handOver(upstream)))
      upstream.pause()
      return undefined
    })
  }).listen(0, '127.0.0.1')
  await once(hbone, 'listening')
  const tcp = net.connect(hbone.address().port, '127.0.0.1')
  await once(tcp, 'connect')
  tcp.pause()
  let settled
  const established = new Promise((resolve) => (settled = resolve))
  let response
  const answered = new Promise((resolve) => (response = resolve))
  let streamClosed
  const closedStream = new Promise((resolve) => (streamClosed = resolve))
  const session = a.clientSession(clientCtx, handOver(tcp), settings, (event, ...args) => {
    if (event === events.Settings) settled(args[0])
    if (event === events.Response) response(args[1])
    if (event === events.StreamClose) streamClosed(args[1])
    return undefined
  })
  const peerMaxStreams = await established
  const apps = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }).listen(0, '127.0.0.1')
  await once(apps, 'listening')
  const app = net.connect({ port: apps.address().port, host: '127.0.0.1', allowHalfOpen: true })
  const [inner] = await once(apps, 'connection')
  a.open(session, handOver(inner), `127.0.0.1:${echo.address().port}`, [])
  if ((await answered) !== 200) fail('the CONNECT was not answered 200')
  const sent = crypto.randomBytes(1 << 20)
  const chunks = []
  app.on('data', (chunk) => chunks.push(chunk))
  app.end(sent)
  await once(app, 'end')
  const received = Buffer.concat(chunks)
  if (!received.equals(sent)) fail(`received ${received.length} bytes that differ from the ${sent.length} sent`)
  if ((await closedStream) !== a.constants.outcomes.Closed) fail('the stream did not close cleanly')
  a.destroy(session, null)
  process.stdout.write(`${JSON.stringify({ ok: true, bytes: received.length, peerMaxStreams, node: process.version, arch: process.arch })}\n`)
  process.exit(0)
})().catch((err) => fail(err.stack))
