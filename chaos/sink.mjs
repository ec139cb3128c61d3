#!/usr/bin/env node
// The chaos run's long-transfer workload, run inside a pod's network
// namespace: a TCP echo server. A client sends `CHAOS <marker>\n` then any
// bytes; every byte comes back on the same connection, and the connection
// ends when the client's side does. One JSON line per connection goes to
// --log when it closes (marker, bytes received, time of the last byte), so
// the run can tell which flows reached an app and until when.
import { appendFileSync, createWriteStream } from 'node:fs'
import { createServer } from 'node:net'
import { parseArgs } from 'node:util'

const { values } = parseArgs({ options: { port: { type: 'string', default: '9090' }, log: { type: 'string' } } })
if (!values.log) {
  console.error('usage: sink.mjs --log <file> [--port 9090]')
  process.exit(2)
}
const server = createServer((socket) => {
  let bytes = 0
  let head = ''
  let marker = null
  let firstAt
  let lastAt
  socket.on('data', (chunk) => {
    bytes += chunk.length
    firstAt ??= Date.now()
    lastAt = Date.now()
    if (marker === null && head.length < 256) {
      head += chunk.subarray(0, 256).toString('latin1')
      const line = /^CHAOS (\S+)\n/.exec(head)
      if (line) marker = line[1]
    }
  })
  socket.pipe(socket)
  socket.on('error', () => undefined)
  socket.on('close', (hadError) => {
    appendFileSync(values.log, `${JSON.stringify({ marker, bytes, firstAt, lastAt, closedAt: Date.now(), hadError })}\n`)
  })
})
server.on('error', (err) => {
  console.error(`sink: ${err.message}`)
  process.exit(1)
})
server.listen(Number(values.port), '0.0.0.0', () => {
  if (process.env.AKM_READY_FD) createWriteStream('', { fd: Number(process.env.AKM_READY_FD) }).end(`${JSON.stringify({ ready: true })}\n`)
})
const stop = () => server.close(() => process.exit(0))
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
