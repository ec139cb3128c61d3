import type { Socket } from 'node:net'
import type { Netns } from '@ambientkit/redirect'

/** What one request from a pod saw. */
export interface RequestResult {
  readonly ok: boolean
  /** The client socket's port: the access log's `source.port` on the outbound side. */
  readonly localPort?: number
  /** The echo app's answer. */
  readonly answer?: { app: string; peer: string; marker: string | null }
  /** Why it failed, as the client saw it. */
  readonly error?: string
}

/**
 * Sends one HTTP request from inside a pod's network namespace, on a socket
 * created there (so the pod's capture rules apply to it as to the pod's own
 * apps), with a marker in the request that the app echoes in its answer.
 */
export async function requestFromPod(netns: Netns, host: string, port: number, marker: string, timeoutMs = 5000): Promise<RequestResult> {
  const signal = AbortSignal.timeout(timeoutMs)
  let socket: Socket | undefined
  // The client port is chosen here so the access logs can be matched even
  // when the proxy resets the connection before connect() returns.
  let localPort = 0
  for (let tries = 0; socket === undefined; tries += 1) {
    localPort = 20_000 + Math.floor(Math.random() * 30_000)
    try {
      socket = await netns.connect({ host, port, localPort, signal })
    } catch (err) {
      const inUse = /EADDRINUSE/.test(errorText(err))
      if (!inUse || tries >= 5) return { ok: false, localPort, error: errorText(err) }
    }
  }
  return new Promise<RequestResult>((resolve) => {
    const chunks: Buffer[] = []
    const timer = setTimeout(() => finish(`no answer within ${timeoutMs} ms`), timeoutMs)
    const finish = (error?: string): void => {
      clearTimeout(timer)
      socket.destroy()
      if (error !== undefined) return resolve({ ok: false, localPort, error })
      const text = Buffer.concat(chunks).toString('utf8')
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1]
      const body = text.split('\r\n\r\n').slice(1).join('\r\n\r\n')
      if (status === undefined) return resolve({ ok: false, localPort, error: text === '' ? 'connection closed without an answer' : 'not an HTTP answer' })
      try {
        resolve({ ok: status === '200', localPort, answer: JSON.parse(body) as RequestResult['answer'] & object })
      } catch {
        resolve({ ok: false, localPort, error: `HTTP ${status} without the app's JSON` })
      }
    }
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
    socket.on('end', () => finish())
    socket.on('error', (err) => finish(errorText(err)))
    socket.write(`GET /hello?marker=${marker} HTTP/1.1\r\nHost: ${host}:${port}\r\nX-Marker: ${marker}\r\nConnection: close\r\n\r\n`)
  })
}

function errorText(err: unknown): string {
  const e = err as { code?: string; details?: { code?: string }; message?: string }
  const code = e.details?.code ?? e.code
  const message = e.message ?? String(err)
  return code !== undefined && !message.includes(code) ? `${code}: ${message}` : message
}
