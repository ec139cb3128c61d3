import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import type { SocketAddress } from '@ambientkit/core'
import { boundAddress, ownNetnsSockets } from '@ambientkit/redirect'

/**
 * Sockets as the workload proxy hands them to a transport: descriptors
 * accepted and connected with `NetnsSockets` (here this process's own
 * namespace, no root needed).
 */
export const sockets = ownNetnsSockets()

/** A listener in this namespace whose connections go to `onFd` as descriptors. */
export function listenDescriptors(onFd: (fd: number, remote: SocketAddress) => void): { address: SocketAddress; close(): void } {
  const fd = sockets.listenFd({ host: '127.0.0.1', port: 0 })
  const address = boundAddress(fd)
  const acceptor = sockets.accept(fd, ({ fd: accepted, remote }) => onFd(accepted, remote))
  return { address, close: () => acceptor.close() }
}

/**
 * Application connections as the outbound listener sees them: `app()` gives
 * what the application holds (a socket) and the proxy's accepted end (a
 * descriptor, to hand to a transport's `open`).
 */
export function appConnections(): { app(): Promise<{ app: Socket; accepted: number }>; close(): void } {
  const accepted = new Map<number, (fd: number) => void>()
  const early = new Map<number, number>()
  const apps = new Set<Socket>()
  const listener = listenDescriptors((fd, remote) => {
    const waiting = accepted.get(remote.port)
    if (waiting === undefined) early.set(remote.port, fd)
    else waiting(fd)
  })
  return {
    async app() {
      const socket = connect({ host: listener.address.address, port: listener.address.port, allowHalfOpen: true })
      // Resets are what several tests provoke; each checks the ones it expects.
      socket.on('error', () => {})
      apps.add(socket)
      await once(socket, 'connect')
      const port = socket.localPort!
      const fd = early.get(port) ?? (await new Promise<number>((resolve) => accepted.set(port, resolve)))
      early.delete(port)
      accepted.delete(port)
      return { app: socket, accepted: fd }
    },
    close() {
      for (const socket of apps) socket.destroy()
      listener.close()
    },
  }
}
