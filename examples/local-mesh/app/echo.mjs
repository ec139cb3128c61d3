#!/usr/bin/env node
// The demo's workload: an HTTP echo app, run inside a pod's network namespace
// (ip netns exec <pod> node echo.mjs --name shop/api --port 8080). It answers
// with its own name, the peer address it saw and the request's marker, so
// the demo can tell who reached whom and look for the marker on the wire.
import { createServer } from 'node:http'
import { createWriteStream } from 'node:fs'
import { parseArgs } from 'node:util'

const { values } = parseArgs({ options: { name: { type: 'string' }, port: { type: 'string', default: '8080' } } })
if (!values.name) {
  console.error('usage: echo.mjs --name <namespace/name> [--port 8080]')
  process.exit(2)
}
let served = 0
const server = createServer((req, res) => {
  served += 1
  const body = JSON.stringify({
    app: values.name,
    peer: req.socket.remoteAddress,
    path: req.url,
    marker: req.headers['x-marker'] ?? null,
    served,
  })
  const text = `${body}\n`
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), connection: 'close' })
  res.end(text)
})
server.listen(Number(values.port), '0.0.0.0', () => {
  console.log(`${values.name} listening on :${values.port}`)
  if (process.env.AKM_READY_FD) {
    const out = createWriteStream('', { fd: Number(process.env.AKM_READY_FD) })
    out.end(`${JSON.stringify({ ready: true })}\n`)
  }
})
const stop = () => server.close(() => process.exit(0))
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
