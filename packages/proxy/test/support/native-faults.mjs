// Runs one scenario against a fault-injecting build of the HBONE addon
// (scripts/prebuilds.mjs --variant faults), in a process of its own, and
// prints what JavaScript saw as one JSON line.
//
//   node native-faults.mjs ADDON.node MATERIAL.json SCENARIO
//
// Scenarios:
//   terminal  two tunnels up; then every event allocation fails and the client session is destroyed
//   ping      every event allocation fails; then a PING is sent (its PingAck cannot be queued)
//   call      the next napi_create_int32 fails while JavaScript calls streams()
//   delivery  the next make_number (building an event's arguments) fails while a PingAck is delivered

import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import net from 'node:net'

const [addonPath, materialPath, scenario] = process.argv.slice(2)
const material = JSON.parse(readFileSync(materialPath, 'utf8'))
const a = createRequire(import.meta.url)(addonPath)
const { events } = a.constants
const settings = [4 << 20, 16 << 20, 16384, 100]
const handOver = (socket) => {
  const fd = a.dupFd(socket._handle.fd)
  socket.destroy()
  return fd
}
setTimeout(() => {
  process.stdout.write(`${JSON.stringify({ timedOut: true, seen })}\n`)
  process.exit(1)
}, 10_000).unref()

/** Every event each side's callback received, by name. */
const seen = { client: [], server: [], uncaught: [] }
const names = Object.fromEntries(Object.entries(events).map(([name, number]) => [number, name]))
const waiters = []
const wake = () => {
  for (const waiter of [...waiters]) {
    if (!waiter.test()) continue
    waiters.splice(waiters.indexOf(waiter), 1)
    waiter.resolve()
  }
}
const record = (side, event, args) => {
  seen[side].push({ event: names[event], args: args.filter((arg) => !Array.isArray(arg)) })
  wake()
}
const until = (test) => (test() ? Promise.resolve() : new Promise((resolve) => waiters.push({ test, resolve })))
const count = (side, name) => seen[side].filter((entry) => entry.event === name).length
process.on('uncaughtException', (err) => {
  seen.uncaught.push(err.message)
  wake()
})

const serverCtx = a.createContext(true, material.server.chain, material.server.key, material.roots)
const clientCtx = a.createContext(false, material.client.chain, material.client.key, material.roots)
// The scenarios reset the tunnels: the echo's end may see ECONNRESET, which is expected here.
const echo = net.createServer((socket) => socket.on('error', () => {}).pipe(socket)).listen(0, '127.0.0.1')
await once(echo, 'listening')
const hbone = net.createServer({ pauseOnConnect: true }, (socket) => {
  const session = a.serverSession(serverCtx, handOver(socket), settings, (event, ...args) => {
    record('server', event, args)
    if (event !== events.Request) return undefined
    const upstream = net.connect(echo.address().port, '127.0.0.1', () => a.splice(session, args[0], handOver(upstream)))
    upstream.pause()
    return undefined
  })
}).listen(0, '127.0.0.1')
await once(hbone, 'listening')
const tcp = net.connect(hbone.address().port, '127.0.0.1')
await once(tcp, 'connect')
tcp.pause()
const session = a.clientSession(clientCtx, handOver(tcp), settings, (event, ...args) => record('client', event, args))
// Both sides settled: a fault injected from here on hits only what the scenario does.
await until(() => count('client', 'Settings') === 1 && count('server', 'Settings') === 1)

const result = {}
if (scenario === 'terminal') {
  const apps = net.createServer({ pauseOnConnect: true }).listen(0, '127.0.0.1')
  await once(apps, 'listening')
  for (let i = 0; i < 2; i++) {
    const app = net.connect(apps.address().port, '127.0.0.1')
    app.on('error', () => {})
    const [inner] = await once(apps, 'connection')
    a.open(session, handOver(inner), `127.0.0.1:${echo.address().port}`, [])
  }
  await until(() => count('client', 'Response') === 2)
  a.injectFaults({ eventAlloc: true })
  a.destroy(session, 'destroyed by the test')
  await until(() => count('client', 'Close') === 1 && count('server', 'Close') === 1)
} else if (scenario === 'ping') {
  a.injectFaults({ eventAlloc: true })
  a.ping(session)
  await until(() => count('client', 'Close') === 1)
} else if (scenario === 'call') {
  a.injectFaults({ napi: 'napi_create_int32', count: 1 })
  try {
    a.streams(session)
  } catch (err) {
    result.thrown = { code: err.code, message: err.message }
  }
  result.after = a.streams(session)
  a.destroy(session, null)
  await until(() => count('client', 'Close') === 1)
} else if (scenario === 'delivery') {
  a.injectFaults({ napi: 'make_number', count: 1 })
  a.ping(session)
  await until(() => count('client', 'Close') === 1 && seen.uncaught.length === 1)
}
process.stdout.write(`${JSON.stringify({ ...result, seen })}\n`)
process.exit(0)
