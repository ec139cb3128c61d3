import { closeSync } from 'node:fs'
import { PROXY_MARK, type AcceptedSocket, type Logger, type NetnsSockets, type SocketAcceptor, type SocketAddress } from '@ambientkit/core'

/** A listener of a workload proxy, inside the pod's network namespace. */
export interface Listener {
  /** Where it is bound. */
  readonly address: SocketAddress
  readonly acceptor: SocketAcceptor
}

/**
 * Opens a listener on `port` inside the pod's namespace, marked 0x539 (so
 * the pod's capture lets the proxy's own traffic pass), and accepts on it:
 * every connection reaches `onSocket` as a descriptor. It listens on `::`
 * (IPv4 too, mapped), or on `0.0.0.0` only when the kernel has no IPv6 at
 * all (see {@link kernelWithoutIpv6}).
 *
 * With `SO_REUSEPORT`, so that a new proxy process (an upgrade) opens its
 * listeners next to a running one's and both accept until the old one
 * drains; only a process of the same uid can join the group (the kernel's
 * rule), so no other user's program can take a share of the pod's traffic.
 */
export function openListener(netns: NetnsSockets, port: number, logger: Logger, onSocket: (socket: AcceptedSocket) => void, onPause: (errno: string) => void): Listener {
  let fd: number
  let address: SocketAddress = { address: '::', port, family: 6 }
  try {
    fd = netns.listenFd({ host: '::', port, mark: PROXY_MARK, ipv6Only: false, reusePort: true })
  } catch (err) {
    if (!kernelWithoutIpv6(err)) throw err
    logger.info({ port }, 'no IPv6 in this kernel: listening on IPv4 only')
    fd = netns.listenFd({ host: '0.0.0.0', port, mark: PROXY_MARK, reusePort: true })
    address = { address: '0.0.0.0', port, family: 4 }
  }
  try {
    return { address, acceptor: netns.accept(fd, onSocket, onPause) }
  } catch (err) {
    closeSync(fd) // not the acceptor's yet
    throw err
  }
}

/**
 * Whether a failed dual-stack listen means the kernel has no IPv6 at all
 * (booted with `ipv6.disable=1`: no AF_INET6 sockets), the one case for an
 * IPv4-only listener. A pod whose IPv6 is only disabled by sysctl still
 * binds `::` and takes IPv4 through it; any other failure, such as another
 * program holding the port, is an error: an IPv4-only proxy would leave the
 * pod's captured IPv6 traffic to whoever holds `[::]:port`.
 */
function kernelWithoutIpv6(err: unknown): boolean {
  const { code, details } = err as { code?: unknown; details?: { errnoName?: unknown } }
  return code === 'EAFNOSUPPORT' || details?.errnoName === 'EAFNOSUPPORT'
}
