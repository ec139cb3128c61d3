// An HBONE client in a process of its own (Node's http2, not our client),
// so that its CONNECT reaches a server while the test's JavaScript thread
// is blocked: the request then waits, behind the server's data path, for
// JavaScript to decide it, as it does on a loaded node.
//
//   node queued-connect-client.mjs MATERIAL.json HOST:PORT AUTHORITY GO_FIFO SENT_FIFO
//
// Prints "connected" once the session is up, reads a line from GO_FIFO,
// sends CONNECT AUTHORITY, then a PING once the request is written, and
// writes "sent" to SENT_FIFO when the PING's ACK arrives: the server has
// read the CONNECT by then (a peer processes frames in order). Once
// answered, sends "hello" and half-closes; prints one JSON line: { status, body }, or
// { error, code, rstCode } when the tunnel failed.
// MATERIAL.json: { "chain", "key", "roots" } (PEM): the client's SVID and the trust bundle.

import { readFileSync, writeFileSync } from 'node:fs'
import http2 from 'node:http2'
import { setImmediate } from 'node:timers'

const [materialPath, address, authority, goFifo, sentFifo] = process.argv.slice(2)
const material = JSON.parse(readFileSync(materialPath, 'utf8'))
const report = (result) => {
  process.stdout.write(`${JSON.stringify(result)}\n`)
  process.exit(0)
}
setTimeout(() => report({ error: 'timed out' }), 20_000).unref()

const session = http2.connect(`https://${address}`, {
  cert: material.chain,
  key: material.key,
  ca: material.roots,
  // The server's SVID names a SPIFFE ID, not a host: the test checks identities elsewhere.
  checkServerIdentity: () => undefined,
})
session.on('error', (err) => report({ error: err.message, code: err.code }))
session.once('remoteSettings', () => {
  process.stdout.write('connected\n')
  readFileSync(goFifo)
  const written = session.socket.bytesWritten
  const stream = session.request({ ':method': 'CONNECT', ':authority': authority })
  // The PING only once the HEADERS are written: nghttp2 sends a PING ahead of requests still queued.
  const pingOnceWritten = () => {
    if (session.socket.bytesWritten === written) return setImmediate(pingOnceWritten)
    session.ping(() => writeFileSync(sentFifo, 'sent\n'))
  }
  pingOnceWritten()
  let status
  const chunks = []
  stream.on('response', (headers) => {
    status = headers[':status']
    stream.end('hello')
  })
  stream.on('data', (chunk) => chunks.push(chunk))
  stream.on('end', () => report({ status, body: Buffer.concat(chunks).toString() }))
  stream.on('error', (err) => report({ error: err.message, code: err.code, rstCode: stream.rstCode }))
})
