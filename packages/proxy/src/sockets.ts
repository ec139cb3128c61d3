import { createSocket, type Socket as DgramSocket } from 'node:dgram'
import type { Socket } from 'node:net'
import { abortError, type BindUdpFdOptions, type ConnectFdOptions, type NetnsSockets } from '@ambientkit/core'
import { asSocket } from './transport/connection'

/**
 * Node sockets from a pod's `NetnsSockets`, for the parts of the proxy
 * that read and write in JavaScript (the DNS proxy): descriptors made in
 * the namespace, wrapped with Node's public API.
 */

/** A UDP socket bound inside the namespace, as a `dgram.Socket`. */
export function bindUdp(netns: NetnsSockets, options: BindUdpFdOptions & { readonly signal?: AbortSignal }): Promise<DgramSocket> {
  if (options.signal?.aborted === true) return Promise.reject(abortError(options.signal, 'bindUdp'))
  const { signal: _signal, ...bind } = options
  const fd = netns.bindUdpFd(bind)
  const socket = createSocket({ type: (options.host ?? '0.0.0.0').includes(':') ? 'udp6' : 'udp4' })
  return new Promise<DgramSocket>((resolve, reject) => {
    const onError = (err: Error): void => {
      socket.off('listening', onListening)
      socket.close()
      reject(err)
    }
    const onListening = (): void => {
      socket.off('error', onError)
      resolve(socket)
    }
    socket.once('error', onError)
    socket.once('listening', onListening)
    // Node adopts the descriptor from here on and closes it with the socket.
    socket.bind({ fd })
  })
}

/** A TCP connection made inside the namespace, as a `net.Socket` (half-open allowed when asked). */
export async function connectSocket(netns: NetnsSockets, options: ConnectFdOptions, allowHalfOpen = false): Promise<Socket> {
  return asSocket(await netns.connectFd(options), allowHalfOpen)
}
