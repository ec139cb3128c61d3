import { connect as netConnect, type Socket, type TcpNetConnectOpts } from 'node:net'
import { abortError } from '@ambientkit/core'

/**
 * `net.connect` that resolves once connected and honours `signal`: every
 * listener is removed on the way out and the socket is destroyed on any
 * failure, so an abandoned attempt leaves nothing behind.
 */
export function connectTcp(options: TcpNetConnectOpts, signal: AbortSignal, what: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(abortError(signal, what))
      return
    }
    const socket = netConnect({ noDelay: true, ...options })
    const done = (err?: Error): void => {
      signal.removeEventListener('abort', onAbort)
      socket.off('error', done)
      socket.off('connect', onConnect)
      if (err === undefined) return
      socket.destroy()
      reject(err)
    }
    const onConnect = (): void => {
      done()
      resolve(socket)
    }
    const onAbort = (): void => done(abortError(signal, what))
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('error', done)
    socket.once('connect', onConnect)
  })
}
