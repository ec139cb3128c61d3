import { Socket } from 'node:net'
import { invalidArgument } from '@ambientkit/core'
import type { CarriedConnection } from './contract'

/**
 * A carried connection as a Node socket: a socket as it is, a descriptor
 * wrapped (`new net.Socket({ fd })`, public API: no private handle is
 * touched). Nagle is off: a proxy must not hold back small writes its peers
 * already sent.
 */
export function asSocket(connection: CarriedConnection, allowHalfOpen: boolean): Socket {
  if (typeof connection !== 'number') {
    connection.allowHalfOpen = allowHalfOpen
    return connection
  }
  if (!Number.isInteger(connection) || connection < 0) throw invalidArgument('connection', connection, 'a socket or a connected descriptor')
  const socket = new Socket({ fd: connection, readable: true, writable: true, allowHalfOpen })
  socket.setNoDelay(true)
  return socket
}

/** The descriptor of a carried connection, for a transport that copies natively; a socket is refused. */
export function asDescriptor(connection: CarriedConnection, what: string): number {
  if (typeof connection === 'number' && Number.isInteger(connection) && connection >= 0) return connection
  throw invalidArgument(
    what,
    connection,
    'a connected descriptor (the native transport carries descriptors: accept and connect them with NetnsSockets.accept and connectFd)',
  )
}

/** Closes a connection that will not be carried, with RST: its peer learns it failed, not that it ended. */
export function resetConnection(connection: CarriedConnection): void {
  const socket = typeof connection === 'number' ? new Socket({ fd: connection, readable: true, writable: true }) : connection
  socket.on('error', () => {})
  if (!socket.destroyed) socket.resetAndDestroy()
}
