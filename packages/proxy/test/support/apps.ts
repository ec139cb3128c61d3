import { createHash } from 'node:crypto'
import type { Server, Socket } from 'node:net'
import type { Netns } from '@ambientkit/redirect'

/**
 * Test applications that run "inside" a pod: their listening sockets are
 * created in the pod's network namespace, their logic runs in the test.
 */

/** Echoes every byte back; ends when the client ends. */
export async function startEchoApp(netns: Netns, port: number): Promise<Server> {
  const server = await netns.listen({ host: '::', port, ipv6Only: false, server: { allowHalfOpen: true } })
  server.on('connection', (socket) => {
    socket.on('error', () => {})
    socket.pipe(socket)
  })
  return server
}

/**
 * Reads until the client half-closes, then answers one line with what it
 * saw (`<peer address> <bytes> <sha256>`) and ends.
 */
export async function startSinkApp(netns: Netns, port: number): Promise<Server> {
  const server = await netns.listen({ host: '::', port, ipv6Only: false, server: { allowHalfOpen: true } })
  server.on('connection', (socket) => {
    socket.on('error', () => {})
    const hash = createHash('sha256')
    let bytes = 0
    socket.on('data', (chunk: Buffer) => {
      bytes += chunk.length
      hash.update(chunk)
    })
    socket.on('end', () => socket.end(`${socket.remoteAddress} ${bytes} ${hash.digest('hex')}\n`))
  })
  return server
}

/** Resets every connection as soon as it arrives (RST, not FIN). */
export async function startResetApp(netns: Netns, port: number): Promise<Server> {
  const server = await netns.listen({ host: '::', port, ipv6Only: false })
  server.on('connection', (socket) => {
    socket.on('error', () => {})
    socket.once('data', () => socket.resetAndDestroy())
  })
  return server
}

/** What one request/response over a fresh connection produced. */
export interface Exchange {
  /** Bytes the peer sent back before closing. */
  readonly response: string
  /** The socket error, if the connection was reset or refused. */
  readonly error?: NodeJS.ErrnoException
  /** True when the peer ended cleanly (FIN). */
  readonly ended: boolean
}

/** Writes `payload`, half-closes, and collects what comes back until the socket closes. */
export function exchange(socket: Socket, payload: string | Buffer): Promise<Exchange> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let error: NodeJS.ErrnoException | undefined
    let ended = false
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
    socket.on('error', (err) => (error = err))
    socket.on('end', () => (ended = true))
    socket.on('close', () => resolve({ response: Buffer.concat(chunks).toString(), ended, ...(error ? { error } : {}) }))
    socket.end(payload)
  })
}

/** Like {@link exchange}, but a connect that fails (refused or reset at once) counts as an exchange that got nothing. */
export async function tryExchange(connecting: Promise<Socket>, payload: string | Buffer): Promise<Exchange> {
  let socket: Socket
  try {
    socket = await connecting
  } catch (err) {
    return { response: '', ended: false, error: err as NodeJS.ErrnoException }
  }
  return exchange(socket, payload)
}

/** Collects what the peer sends until it closes (the caller writes and ends). */
export function exchangeStream(socket: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
    socket.once('error', reject)
    socket.once('close', () => resolve(Buffer.concat(chunks).toString()))
  })
}

/**
 * Writes `payload` and resolves with the first answer: the connection is
 * established end to end. Rejects, saying so, when it fails or closes first.
 */
export function established(socket: Socket, payload = 'open'): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(new Error(`the connection failed before the first answer: ${err.message}`, { cause: err }))
    const onClose = (): void => reject(new Error('the connection closed before the first answer'))
    socket.once('error', onError)
    socket.once('close', onClose)
    socket.once('data', () => {
      socket.off('error', onError)
      socket.off('close', onClose)
      resolve()
    })
    socket.write(payload)
  })
}

/** Resolves once `socket` closes, with the error it saw first, if any. */
export function closedWith(socket: Socket): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    let error: NodeJS.ErrnoException | undefined
    socket.on('error', (err) => (error ??= err))
    socket.once('close', () => resolve(error))
  })
}

/**
 * Resolves once `condition()` holds, checking after each turn of the event
 * loop's timers, for state that has no event of its own (descriptor counts,
 * connection tables). Rejects after `timeoutMs`.
 */
export async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms: ${condition.toString()}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}
