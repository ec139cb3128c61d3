import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { afterEach, expect, it } from 'vitest'
import { startAgent, tsArgs, type Agent } from '../lib/processes'

/**
 * The pod agent's HTTP load (bench/rps.ts) against Node's HTTP server on
 * loopback: what it counts, from deliberate stalls, errors and drops, never
 * from how fast anything ran.
 */

interface Load {
  requests: number
  completed: number
  failed: number
  late: number
  latencyUs: { p90: number; max: number }
  connections: number
}

const opened: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  await Promise.all(opened.splice(0).map((thing) => thing.close()))
})

/** Node's HTTP server answering 1 KiB; `answer` may hold, fail or drop the n-th request (from 0, in the order they arrive). */
async function server(answer: (n: number, respond: (status: number) => void, drop: () => void) => void): Promise<number> {
  let count = 0
  const http: Server = createServer((req, res) => {
    req.resume()
    req.once('end', () =>
      answer(
        count++,
        (status) => {
          res.writeHead(status, { 'content-length': 1024 })
          res.end(Buffer.alloc(1024))
        },
        () => req.socket.destroy(),
      ),
    )
  })
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve))
  opened.push({ close: () => new Promise<void>((resolve) => http.close(() => resolve()).closeAllConnections()) })
  return (http.address() as AddressInfo).port
}

async function agent(): Promise<Agent> {
  const { agent } = await startAgent(undefined, process.execPath, tsArgs(fileURLToPath(new URL('../lib/pod-agent.ts', import.meta.url))))
  opened.push(agent)
  return agent
}

it('counts from when a request was due: the requests queued behind a held response carry its wait, and went out late', async () => {
  // Request 5 (due at 50 ms) is answered 300 ms later. On one connection, requests 6.. (due every 10 ms) wait for it:
  // request 5+k finishes no sooner than 350 ms, so its latency from when it was due is at least 300 - 10k ms.
  const port = await server((n, respond) => (n === 5 ? setTimeout(() => respond(200), 300) : respond(n === 50 ? 500 : 200)))
  const app = await agent()
  await app.request({ op: 'http-open', host: '127.0.0.1', port, connections: 1 })
  const load = await app.request<Load>({ op: 'http-load', rate: 100, durationMs: 1000, size: 1024 })
  expect(load.requests).toBe(100)
  // The one answered 500.
  expect(load).toMatchObject({ completed: 99, failed: 1, connections: 1 })
  // Requests 6 to 15 waited at least 290 down to 200 ms: the ten slowest of 99, so the p90 is one of them.
  expect(load.latencyUs.max).toBeGreaterThanOrEqual(290_000)
  expect(load.latencyUs.p90).toBeGreaterThanOrEqual(200_000)
  // Requests 6 to 33 went out at 350 ms or later, more than 10 ms after they were due.
  expect(load.late).toBeGreaterThanOrEqual(28)
})

it('fails the request whose connection the server drops, and carries the rest on the connections left', async () => {
  const port = await server((n, respond, drop) => (n === 10 ? drop() : respond(200)))
  const app = await agent()
  await app.request({ op: 'http-open', host: '127.0.0.1', port, connections: 2 })
  const load = await app.request<Load>({ op: 'http-load', rate: 100, durationMs: 500, size: 1024 })
  expect(load).toMatchObject({ requests: 50, completed: 49, failed: 1, connections: 1 })
})

it('refuses a load before any connection is open', async () => {
  const app = await agent()
  await expect(app.request({ op: 'http-load', rate: 100, durationMs: 100, size: 1024 })).rejects.toThrow(/http-load before http-open/)
})
