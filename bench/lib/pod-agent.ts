import { createServer as createHttpServer } from 'node:http'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { createInterface } from 'node:readline'

/**
 * The bench's application inside one pod: started with `ip netns exec`, it
 * is an ordinary process of that network namespace (no netns tricks), the
 * way an app in a captured pod is. It takes one JSON command per stdin line
 * and answers one JSON line per command:
 *
 * - `{"op":"serve","port":7000}`: an echo server on every address;
 * - `{"op":"pingpong",host,port,size,warmup,count}`: one connection,
 *   synchronous request/response of `size` bytes, percentiles in µs;
 * - `{"op":"connrate",host,port,size,concurrency,durationMs}`: new
 *   connections (connect, one exchange, close) for a fixed time;
 * - `{"op":"open-idle",host,port,count,parallel}` then `{"op":"close-idle"}`:
 *   holds connections that each made one exchange;
 * - `{"op":"connlatency",host,port,count}`: new connections one after the
 *   other (connect, one 64-byte exchange, close), percentiles of each one's
 *   time in µs: how long a new connection waits while others are open;
 * - `{"op":"serve-http","port":8080,"size":1024}`: an HTTP/1.1 server
 *   (Node's own, keep-alive) answering every request, once its body is
 *   read, with `size` bytes;
 * - `{"op":"http-open",host,port,connections}`, then
 *   `{"op":"http-load",rate,durationMs,size}` (as often as wanted), then
 *   `{"op":"http-close"}`: an open-loop load at a fixed rate over held
 *   keep-alive connections (see {@link httpLoad}).
 *
 * It exits when stdin ends.
 */

interface Target {
  host: string
  port: number
}

const servers: Server[] = []
let idle: Socket[] = []

function serve(port: number): Promise<Record<string, unknown>> {
  const server = createServer({ noDelay: true }, (socket) => {
    socket.on('error', () => socket.destroy())
    socket.pipe(socket)
  })
  server.maxConnections = 100_000
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host: '::', port, ipv6Only: false, backlog: 4096 }, () => {
      servers.push(server)
      resolve({ listening: port })
    })
  })
}

function open(target: Target): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: target.host, port: target.port, noDelay: true })
    socket.once('error', reject)
    socket.once('connect', () => {
      socket.off('error', reject)
      resolve(socket)
    })
  })
}

/** Writes `payload` and resolves when as many bytes came back. */
function exchange(socket: Socket, payload: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    let received = 0
    const onData = (chunk: Buffer): void => {
      received += chunk.length
      if (received >= payload.length) {
        done()
        resolve()
      }
    }
    const onError = (err: Error): void => {
      done()
      reject(err)
    }
    const onEnd = (): void => onError(new Error(`connection ended after ${received} of ${payload.length} bytes`))
    const done = (): void => {
      socket.off('data', onData)
      socket.off('error', onError)
      socket.off('end', onEnd)
    }
    socket.on('data', onData)
    socket.on('error', onError)
    socket.on('end', onEnd)
    socket.write(payload)
  })
}

function percentile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!
}

/**
 * One connection, one request in flight: the latency of a round trip with
 * nothing queued. The socket is read in flowing mode with one listener and
 * no promise per round trip, so the client adds as little as Node can.
 */
async function pingpong(target: Target & { size: number; warmup: number; count: number }): Promise<Record<string, unknown>> {
  const socket = await open(target)
  const payload = Buffer.alloc(target.size, 0x61)
  const total = target.warmup + target.count
  const samples = new Float64Array(target.count)
  try {
    await new Promise<void>((resolve, reject) => {
      let done = 0
      let received = 0
      let start = process.hrtime.bigint()
      socket.on('error', reject)
      socket.on('end', () => reject(new Error(`connection ended after ${done} round trips`)))
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length
        if (received < target.size) return
        const now = process.hrtime.bigint()
        if (done >= target.warmup) samples[done - target.warmup] = Number(now - start) / 1000
        received -= target.size
        done += 1
        if (done === total) return resolve()
        start = process.hrtime.bigint()
        socket.write(payload)
      })
      socket.write(payload)
    })
  } finally {
    socket.destroy()
  }
  samples.sort()
  let sum = 0
  for (const value of samples) sum += value
  return { p50: percentile(samples, 0.5), p90: percentile(samples, 0.9), p99: percentile(samples, 0.99), mean: sum / samples.length, count: samples.length }
}

async function connrate(target: Target & { size: number; concurrency: number; durationMs: number }): Promise<Record<string, unknown>> {
  const payload = Buffer.alloc(target.size, 0x62)
  const deadline = performance.now() + target.durationMs
  let connections = 0
  let errors = 0
  let firstError: string | undefined
  const worker = async (): Promise<void> => {
    while (performance.now() < deadline) {
      let socket: Socket | undefined
      try {
        socket = await open(target)
        await exchange(socket, payload)
        connections += 1
      } catch (err) {
        errors += 1
        firstError ??= (err as Error).message
      } finally {
        socket?.destroy()
      }
    }
  }
  const started = performance.now()
  await Promise.all(Array.from({ length: target.concurrency }, worker))
  const seconds = (performance.now() - started) / 1000
  return { connections, errors, seconds, perSecond: connections / seconds, ...(firstError === undefined ? {} : { firstError }) }
}

async function openIdle(target: Target & { count: number; parallel: number }): Promise<Record<string, unknown>> {
  const payload = Buffer.alloc(64, 0x63)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < target.count) {
      next += 1
      const socket = await open(target)
      socket.on('error', () => {})
      idle.push(socket)
      await exchange(socket, payload)
    }
  }
  await Promise.all(Array.from({ length: target.parallel }, worker))
  return { open: idle.length }
}

async function connlatency(target: Target & { count: number }): Promise<Record<string, unknown>> {
  const payload = Buffer.alloc(64, 0x64)
  const samples = new Float64Array(target.count)
  for (let i = 0; i < target.count; i++) {
    const start = process.hrtime.bigint()
    const socket = await open(target)
    try {
      await exchange(socket, payload)
    } finally {
      socket.destroy()
    }
    samples[i] = Number(process.hrtime.bigint() - start) / 1000
  }
  samples.sort()
  return { p50: percentile(samples, 0.5), p90: percentile(samples, 0.9), p99: percentile(samples, 0.99), max: samples[samples.length - 1], count: samples.length }
}

function serveHttp(options: { port: number; size: number }): Promise<Record<string, unknown>> {
  const body = Buffer.alloc(options.size, 0x65)
  const server = createHttpServer((req, res) => {
    req.on('error', () => res.destroy())
    req.resume()
    req.once('end', () => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length })
      res.end(body)
    })
  })
  // The load's connections are held between runs, idle for as long as a run of the other paths takes.
  server.keepAliveTimeout = 600_000
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host: '::', port: options.port, ipv6Only: false }, () => {
      servers.push(server)
      resolve({ listening: options.port })
    })
  })
}

/** One keep-alive connection of the HTTP load, with at most one request in flight (no pipelining). */
interface HttpConnection {
  readonly socket: Socket
  /** The response read so far. */
  received: Buffer
  /** Called with the request's outcome once its whole response came, or the connection failed. */
  onResponse?: (ok: boolean) => void
}

let http: { target: Target; connections: HttpConnection[] } | undefined

/** Bytes of an HTTP/1.1 response with a Content-Length body once complete, `undefined` before, -1 when it cannot be read as one. */
function responseLength(received: Buffer): number | undefined {
  const end = received.indexOf('\r\n\r\n')
  if (end < 0) return received.length > 16_384 ? -1 : undefined
  const length = /\r\ncontent-length: *(\d+)\r\n/i.exec(received.toString('latin1', 0, end + 2))
  return length === null ? -1 : end + 4 + Number(length[1])
}

async function httpOpen(target: Target & { connections: number }): Promise<Record<string, unknown>> {
  await httpClose()
  const sockets = await Promise.all(Array.from({ length: target.connections }, () => open(target)))
  const connections = sockets.map((socket): HttpConnection => ({ socket, received: Buffer.alloc(0) }))
  for (const connection of connections) {
    const fail = (): void => {
      const onResponse = connection.onResponse
      connection.onResponse = undefined
      connection.socket.destroy()
      onResponse?.(false)
    }
    connection.socket.on('error', fail)
    connection.socket.on('close', fail)
    connection.socket.on('data', (chunk: Buffer) => {
      connection.received = connection.received.length === 0 ? chunk : Buffer.concat([connection.received, chunk])
      const length = responseLength(connection.received)
      if (length === undefined || connection.received.length < length) return
      // A byte beyond the one response asked for, or a response nobody asked for, is the peer's error.
      if (length < 0 || connection.received.length > length || connection.onResponse === undefined) return fail()
      const ok = connection.received.subarray(0, 13).toString('latin1') === 'HTTP/1.1 200 '
      connection.received = Buffer.alloc(0)
      const onResponse = connection.onResponse
      connection.onResponse = undefined
      onResponse(ok)
    })
  }
  http = { target, connections }
  return { open: connections.length }
}

/** A request sent this long after it was due counts as late: no connection was free, or the generator fell behind. */
const LATE_MS = 10
/** After the last request was due, how long the responses may take before the rest count as failed. */
const DRAIN_MS = 5000

/**
 * An open loop: request i (`POST /` with a `size`-byte body) is due at
 * start + i/rate, whatever came back before, and goes out on the first of
 * the held connections that is free (one request in flight on each, as
 * HTTP/1.1 clients do). Latency runs from when it was due, not when it
 * went out, so a request kept waiting by a slow response counts its wait
 * (no coordinated omission); the time from when it went out to its
 * response (`serviceUs`) is kept too, since the timer that sends it wakes
 * with about a millisecond's granularity, more than what a proxy adds.
 * Failed: an error, a status other than 200, or no response within
 * {@link DRAIN_MS} of the end. The generator's own CPU (cores) shows
 * whether it, rather than the path, was the limit.
 */
async function httpLoad(options: { rate: number; durationMs: number; size: number }): Promise<Record<string, unknown>> {
  if (http === undefined) throw new Error('http-load before http-open')
  const { target } = http
  const request = Buffer.concat([
    Buffer.from(`POST / HTTP/1.1\r\nHost: ${target.host}:${target.port}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${options.size}\r\n\r\n`, 'latin1'),
    Buffer.alloc(options.size, 0x66),
  ])
  const total = Math.max(1, Math.round((options.rate * options.durationMs) / 1000))
  const interval = 1000 / options.rate
  const latencies = new Float64Array(total)
  const service = new Float64Array(total)
  let completed = 0
  let failed = 0
  let late = 0
  let sent = 0
  let lastResponse = 0
  const idle = http.connections.filter((c) => !c.socket.destroyed)
  const cpu = process.cpuUsage()
  const start = performance.now() + 1
  const dueAt = (i: number): number => start + i * interval
  let finish!: () => void
  const finished = new Promise<void>((resolve) => (finish = resolve))
  let timer: NodeJS.Timeout | undefined
  const pump = (): void => {
    const now = performance.now()
    const due = Math.min(total, Math.floor((now - start) / interval) + 1)
    while (sent < due) {
      const connection = idle.pop()
      if (connection === undefined) break
      // One that failed while idle is left out.
      if (connection.socket.destroyed) continue
      const dueTime = dueAt(sent++)
      if (now - dueTime > LATE_MS) late += 1
      connection.onResponse = (ok) => {
        const at = performance.now()
        if (ok) {
          service[completed] = (at - now) * 1000
          latencies[completed++] = (at - dueTime) * 1000
        } else {
          failed += 1
        }
        lastResponse = at
        if (!connection.socket.destroyed) idle.push(connection)
        if (completed + failed === total) finish()
        else pump()
      }
      connection.socket.write(request)
    }
  }
  const tick = (): void => {
    pump()
    if (sent < total) timer = setTimeout(tick, Math.max(0, dueAt(sent) - performance.now()))
  }
  timer = setTimeout(tick, 1)
  const drained = setTimeout(finish, options.durationMs + DRAIN_MS)
  await finished
  clearTimeout(timer)
  clearTimeout(drained)
  const { user, system } = process.cpuUsage(cpu)
  const wall = (performance.now() - start) / 1000
  // What is still due or in flight failed; a connection with a response outstanding cannot carry the next run.
  failed = total - completed
  for (const connection of http.connections) {
    if (connection.onResponse === undefined) continue
    connection.onResponse = undefined
    connection.socket.destroy()
  }
  const summary = (values: Float64Array): Record<string, number> | null => {
    const sorted = values.subarray(0, completed).sort()
    return completed > 0 ? { p50: percentile(sorted, 0.5), p90: percentile(sorted, 0.9), p99: percentile(sorted, 0.99), max: sorted[completed - 1]! } : null
  }
  const seconds = completed > 0 ? (lastResponse - start) / 1000 : wall
  return {
    requests: total,
    completed,
    failed,
    late,
    seconds,
    perSecond: completed / seconds,
    latencyUs: summary(latencies),
    serviceUs: summary(service),
    generatorCores: (user + system) / 1e6 / wall,
    connections: http.connections.filter((c) => !c.socket.destroyed).length,
  }
}

async function httpClose(): Promise<Record<string, unknown>> {
  const connections = http?.connections ?? []
  http = undefined
  await Promise.all(connections.map((c) => new Promise<void>((resolve) => (c.socket.destroyed ? resolve() : c.socket.once('close', () => resolve()).destroy()))))
  return { closed: connections.length }
}

async function closeIdle(): Promise<Record<string, unknown>> {
  const closing = idle.map((socket) => new Promise<void>((resolve) => (socket.destroyed ? resolve() : socket.once('close', () => resolve()).destroy())))
  const count = idle.length
  idle = []
  await Promise.all(closing)
  return { closed: count }
}

async function handle(command: Record<string, unknown>): Promise<Record<string, unknown>> {
  const c = command as never
  switch (command.op) {
    case 'serve':
      return serve(Number(command.port))
    case 'pingpong':
      return pingpong(c)
    case 'connrate':
      return connrate(c)
    case 'open-idle':
      return openIdle(c)
    case 'close-idle':
      return closeIdle()
    case 'connlatency':
      return connlatency(c)
    case 'serve-http':
      return serveHttp(c)
    case 'http-open':
      return httpOpen(c)
    case 'http-load':
      return httpLoad(c)
    case 'http-close':
      return httpClose()
    default:
      throw new Error(`unknown op ${JSON.stringify(command.op)}: expected serve, pingpong, connrate, open-idle, close-idle, connlatency, serve-http, http-open, http-load or http-close`)
  }
}

const lines = createInterface({ input: process.stdin })
let queue = Promise.resolve()
lines.on('line', (line) => {
  queue = queue.then(async () => {
    let answer: Record<string, unknown>
    try {
      answer = await handle(JSON.parse(line) as Record<string, unknown>)
    } catch (err) {
      answer = { error: (err as Error).message }
    }
    process.stdout.write(`${JSON.stringify(answer)}\n`)
  })
})
lines.on('close', () => {
  void queue.then(async () => {
    await closeIdle()
    await httpClose()
    for (const server of servers) server.close()
    process.exit(0)
  })
})
process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid })}\n`)
