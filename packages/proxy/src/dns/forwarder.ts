import { randomInt } from 'node:crypto'
import type { Socket as DgramSocket } from 'node:dgram'
import type { Socket } from 'node:net'
import { formatSocketAddress, type NetnsSockets, type SocketAddress } from '@ambientkit/core'
import { bindUdp, connectSocket } from '../sockets'
import { TcpMessageReader, writeTcpMessage } from './tcp-framing'
import { answersQuery, isTruncated, withId } from './wire'

/** How a query was forwarded and answered. */
export interface ForwardResult {
  /** The upstream's response, with the client's ID back. */
  readonly response: Buffer
  readonly upstream: SocketAddress
  /** Whether the answer came over TCP: asked so, or after a truncated UDP answer. */
  readonly tcp: boolean
}

/** Why forwarding failed: every upstream timed out or refused. */
export class ForwardError extends Error {
  constructor(
    message: string,
    readonly reason: 'timeout' | 'unreachable',
    options?: ErrorOptions,
  ) {
    super(message, options)
  }
}

interface ForwarderOptions {
  readonly netns: NetnsSockets
  readonly upstreams: readonly SocketAddress[]
  readonly mark: number
  /** For the whole forward, every upstream and the TCP fallback included, in milliseconds. */
  readonly timeout: number
}

/**
 * Forwards raw queries to upstream resolvers from inside the pod's
 * namespace, with the proxy mark so capture lets them out. Each query gets
 * a fresh socket (a new source port) and a random ID, and only a response
 * with that ID and the query's question is taken, so an off-path spoofer
 * must guess both. Upstreams are tried in order, each with its share of
 * the time left; a UDP answer with TC set is asked again over TCP.
 */
export class Forwarder {
  readonly #options: ForwarderOptions

  constructor(options: ForwarderOptions) {
    this.#options = options
  }

  async forward(query: Buffer, transport: 'udp' | 'tcp', signal: AbortSignal): Promise<ForwardResult> {
    const clientId = query.readUInt16BE(0)
    const outgoing = withId(query, randomInt(0x10000))
    const deadline = Date.now() + this.#options.timeout
    const upstreams = this.#options.upstreams
    let failure: ForwardError | undefined
    for (let i = 0; i < upstreams.length; i++) {
      const upstream = upstreams[i]!
      const left = deadline - Date.now()
      if (left <= 0 || signal.aborted) break
      const attempt = withDeadline(signal, Math.max(1, Math.floor(left / (upstreams.length - i))))
      try {
        let tcp = transport === 'tcp'
        let response = tcp ? await this.#tcp(upstream, outgoing, attempt.signal) : await this.#udp(upstream, outgoing, attempt.signal)
        if (!tcp && isTruncated(response)) {
          // The answer did not fit in the upstream's UDP: ask the same upstream over TCP in the time left.
          tcp = true
          attempt.extend(Math.max(1, deadline - Date.now()))
          response = await this.#tcp(upstream, outgoing, attempt.signal)
        }
        return { response: withId(response, clientId), upstream, tcp }
      } catch (err) {
        if (err instanceof ForwardError) failure = err
        else if (attempt.signal.aborted) failure = timeoutOrAbort(upstream, transport.toUpperCase(), attempt.signal)
        else failure = new ForwardError(`${formatSocketAddress(upstream)}: ${(err as Error).message}`, 'unreachable', { cause: err })
      } finally {
        attempt.done()
      }
    }
    throw failure ?? new ForwardError(`no answer within ${this.#options.timeout} ms`, 'timeout')
  }

  async #udp(upstream: SocketAddress, query: Buffer, signal: AbortSignal): Promise<Buffer> {
    const socket = await bindUdp(this.#options.netns, { host: upstream.family === 6 ? '::' : '0.0.0.0', mark: this.#options.mark, signal })
    // Whatever the socket reports once this query is settled (a late ICMP error) must not go unhandled.
    socket.on('error', ignore)
    try {
      return await new Promise<Buffer>((resolve, reject) => {
        let settled = false
        const done = (err: Error | undefined, response?: Buffer): void => {
          settled = true
          socket.off('message', onMessage)
          socket.off('error', onError)
          signal.removeEventListener('abort', onAbort)
          if (err === undefined) resolve(response!)
          else reject(err)
        }
        const onMessage = (message: Buffer): void => {
          if (answersQuery(query, message)) done(undefined, message)
        }
        const onError = (err: Error): void => done(new ForwardError(`${formatSocketAddress(upstream)} over UDP: ${err.message}`, 'unreachable', { cause: err }))
        const onAbort = (): void => done(timeoutOrAbort(upstream, 'UDP', signal))
        socket.on('message', onMessage)
        socket.on('error', onError)
        signal.addEventListener('abort', onAbort, { once: true })
        // Connected, so the kernel drops datagrams from anyone else and reports ICMP errors (ECONNREFUSED) to us.
        socket.connect(upstream.port, upstream.address, () => {
          if (!settled) socket.send(query, (err) => err && !settled && onError(err))
        })
      })
    } finally {
      closeQuietly(socket)
    }
  }

  async #tcp(upstream: SocketAddress, query: Buffer, signal: AbortSignal): Promise<Buffer> {
    let socket: Socket
    try {
      socket = await connectSocket(this.#options.netns, { host: upstream.address, port: upstream.port, mark: this.#options.mark, signal })
    } catch (err) {
      if (signal.aborted) throw timeoutOrAbort(upstream, 'TCP', signal)
      throw new ForwardError(`${formatSocketAddress(upstream)} over TCP: ${(err as Error).message}`, 'unreachable', { cause: err })
    }
    socket.on('error', ignore)
    try {
      return await new Promise<Buffer>((resolve, reject) => {
        const reader = new TcpMessageReader()
        const done = (err: Error | undefined, response?: Buffer): void => {
          socket.off('data', onData)
          socket.off('error', onError)
          socket.off('close', onClose)
          signal.removeEventListener('abort', onAbort)
          if (err === undefined) resolve(response!)
          else reject(err)
        }
        const onData = (chunk: Buffer): void => {
          for (const message of reader.push(chunk)) {
            if (answersQuery(query, message)) return done(undefined, message)
          }
        }
        const onError = (err: Error): void => done(new ForwardError(`${formatSocketAddress(upstream)} over TCP: ${err.message}`, 'unreachable', { cause: err }))
        const onClose = (): void => done(new ForwardError(`${formatSocketAddress(upstream)} closed the TCP connection without an answer`, 'unreachable'))
        const onAbort = (): void => done(timeoutOrAbort(upstream, 'TCP', signal))
        socket.on('data', onData)
        socket.on('error', onError)
        socket.on('close', onClose)
        signal.addEventListener('abort', onAbort, { once: true })
        writeTcpMessage(socket, query)
      })
    } finally {
      socket.destroy()
    }
  }
}

const TIMED_OUT = Object.assign(new Error('no answer in time'), { name: 'TimeoutError' })

/**
 * A signal aborted by `stop` or after `ms`, whichever comes first; `done()`
 * forgets both. (AbortSignal.any and AbortSignal.timeout cost tens of
 * microseconds each on Node 20, a query's worth of work.)
 */
function withDeadline(stop: AbortSignal, ms: number): { signal: AbortSignal; extend(ms: number): void; done(): void } {
  const controller = new AbortController()
  const onStop = (): void => controller.abort(stop.reason)
  stop.addEventListener('abort', onStop, { once: true })
  let timer = setTimeout(() => controller.abort(TIMED_OUT), ms)
  return {
    signal: controller.signal,
    extend(more) {
      clearTimeout(timer)
      timer = setTimeout(() => controller.abort(TIMED_OUT), more)
    },
    done() {
      clearTimeout(timer)
      stop.removeEventListener('abort', onStop)
    },
  }
}

function timeoutOrAbort(upstream: SocketAddress, transport: string, signal: AbortSignal): ForwardError {
  const timedOut = signal.reason === TIMED_OUT
  return new ForwardError(`${formatSocketAddress(upstream)} over ${transport}: ${timedOut ? 'no answer in time' : 'cancelled'}`, 'timeout', { cause: signal.reason })
}

const ignore = (): void => {}

function closeQuietly(socket: DgramSocket): void {
  try {
    socket.close()
  } catch {
    // Already closed.
  }
}
