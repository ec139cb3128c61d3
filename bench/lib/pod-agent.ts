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
 *   time in µs: how long a new connection waits while others are open.
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
    default:
      throw new Error(`unknown op ${JSON.stringify(command.op)}: expected serve, pingpong, connrate, open-idle, close-idle or connlatency`)
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
    for (const server of servers) server.close()
    process.exit(0)
  })
})
process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid })}\n`)
