import { AmbientError, canonicalIp, invalidArgument, type SocketAddress } from '@ambientkit/core'
import { isIPv4, type Server, type Socket } from 'node:net'
import { nativeError, RedirectErrorCode } from './errors'
import { native, type PeerCredentials, type SocketOptions } from './native'

/** A connected or listening socket, or its file descriptor. */
export type SocketLike = Socket | Server | number

function fdOf(socket: SocketLike, what: string): number {
  if (typeof socket === 'number') {
    if (Number.isInteger(socket) && socket >= 0) return socket
    throw invalidArgument(what, socket, 'a socket, a server or a file descriptor (integer >= 0)')
  }
  // Node keeps the descriptor on its libuv handle; it is gone once the socket is closed.
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd
  if (typeof fd === 'number' && fd >= 0) return fd
  throw new AmbientError(RedirectErrorCode.SocketOption, `${what}: the socket has no file descriptor (closed, or not a TCP socket)`, {
    details: { name: what },
  })
}

function isMappedOrIpv4(address: string | undefined): boolean {
  return address !== undefined && (isIPv4(address) || address.toLowerCase().startsWith('::ffff:'))
}

/**
 * The destination an accepted connection had before capture redirected it
 * (`SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6, read from
 * conntrack). An IPv4 connection accepted on a dual-stack IPv6 listener is
 * read as IPv4.
 *
 * @param socket - the accepted socket, or its descriptor
 * @param family - for a descriptor: the connection's IP version (4 for an
 *   IPv4 peer on a dual-stack listener, which a descriptor alone does not
 *   tell). Default: the socket's own family.
 * @throws `ERR_AMBIENT_REDIRECT_ORIGINAL_DESTINATION` when the connection has
 * no conntrack entry (it was not redirected) or the socket is closed.
 */
export function originalDestination(socket: Socket | number, family?: 4 | 6): SocketAddress {
  const fd = fdOf(socket, 'originalDestination(socket)')
  if (family !== undefined && family !== 4 && family !== 6) throw invalidArgument('originalDestination family', family, '4 or 6')
  family ??= typeof socket === 'number' ? familyOfFd(fd) : isMappedOrIpv4(socket.localAddress) ? 4 : 6
  try {
    const result = native().originalDst(fd, family)
    return { address: canonicalIp(result.address), port: result.port, family: result.family }
  } catch (err) {
    throw nativeError(RedirectErrorCode.OriginalDestination, 'cannot read the original destination', err, { fd, family })
  }
}

/** Where a socket is bound (`getsockname`): the port a listener on port 0 got, the source of a connection. */
export function boundAddress(fd: number): SocketAddress {
  if (!Number.isInteger(fd) || fd < 0) throw invalidArgument('boundAddress(fd)', fd, 'a socket descriptor')
  try {
    const result = native().localAddress(fd)
    return { address: canonicalIp(result.address), port: result.port, family: result.family }
  } catch (err) {
    throw nativeError(RedirectErrorCode.SocketOption, 'getsockname failed', err, { fd })
  }
}

function familyOfFd(fd: number): 4 | 6 {
  try {
    return native().socketOptions(fd).family
  } catch (err) {
    throw nativeError(RedirectErrorCode.OriginalDestination, 'cannot read the original destination', err, { fd })
  }
}

/** The socket's `SO_MARK` (0 when unmarked). */
export function getSocketMark(socket: SocketLike): number {
  const fd = fdOf(socket, 'getSocketMark(socket)')
  try {
    return native().getMark(fd)
  } catch (err) {
    throw nativeError(RedirectErrorCode.SocketOption, 'getsockopt(SO_MARK) failed', err, { fd })
  }
}

/** Sets the socket's `SO_MARK` (needs CAP_NET_ADMIN); `mark` is an unsigned 32-bit integer. */
export function setSocketMark(socket: SocketLike, mark: number): void {
  const fd = fdOf(socket, 'setSocketMark(socket)')
  if (!Number.isInteger(mark) || mark < 0 || mark > 0xffffffff) throw invalidArgument('mark', mark, 'an integer 0-0xffffffff')
  try {
    native().setMark(fd, mark)
  } catch (err) {
    throw nativeError(RedirectErrorCode.SocketOption, 'setsockopt(SO_MARK) failed', err, { fd, mark })
  }
}

/**
 * The process at the other end of a connected unix socket (`SO_PEERCRED`):
 * pid, uid and gid as the kernel recorded them when it called connect(2).
 * The pid is translated into this process's pid namespace, 0 when the peer
 * is outside it (run with the host's pid namespace to attest pods). It can
 * have exited and been reused since: check the process's start time.
 */
export function peerCredentials(socket: Socket | number): PeerCredentials {
  const fd = fdOf(socket, 'peerCredentials(socket)')
  try {
    return native().peerCredentials(fd)
  } catch (err) {
    throw nativeError(RedirectErrorCode.SocketOption, 'getsockopt(SO_PEERCRED) failed', err, { fd })
  }
}

/** The capture-relevant options the kernel holds for a socket: mark, transparent, freebind, reusePort, family. */
export function readSocketOptions(socket: SocketLike): SocketOptions {
  const fd = fdOf(socket, 'readSocketOptions(socket)')
  try {
    return native().socketOptions(fd)
  } catch (err) {
    throw nativeError(RedirectErrorCode.SocketOption, 'cannot read socket options', err, { fd })
  }
}

export type { PeerCredentials, SocketOptions }
