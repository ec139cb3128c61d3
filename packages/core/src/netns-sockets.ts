import type { AbortOptions } from './lifecycle'
import type { SocketAddress } from './address'

/**
 * The sockets a data plane makes inside one pod's network namespace: what
 * a workload proxy listens, accepts and connects with. It is an interface
 * here so that the proxy depends on no capture code: `@ambientkit/redirect`'s
 * `openNetns()` returns one (a `Netns`), and a test or another platform can
 * bring its own.
 *
 * Every socket is a bare descriptor, non-blocking and close-on-exec, owned
 * by whoever received it. Nothing in Node reads from it until its owner
 * wraps it (`new net.Socket({ fd })`) or hands it to a native data path.
 */
export interface NetnsSockets {
  /** `"<device>:<inode>"` of the namespace: equal ids are the same namespace. */
  readonly id: string
  /** The path the namespace was opened by. */
  readonly path: string
  /** A listening TCP socket created, bound and listening inside the namespace. Throws when the kernel refuses (errno in `details`). */
  listenFd(options: ListenFdOptions): number
  /**
   * Accepts connections on a listening socket from {@link NetnsSockets.listenFd | listenFd}, which
   * becomes the acceptor's (closed by {@link SocketAcceptor.close}).
   * `onSocket` owns each descriptor it is given. `onPause` hears, once per
   * pause, that accepting stopped for a moment because the process ran out
   * of descriptors or memory (the `errno` name: `EMFILE`...).
   */
  accept(listenFd: number, onSocket: (socket: AcceptedSocket) => void, onPause?: (errno: string) => void): SocketAcceptor
  /** A TCP connection created inside the namespace with `options` applied before `connect()`, resolved once connected. */
  connectFd(options: ConnectFdOptions): Promise<number>
  /** A UDP socket created and bound inside the namespace (wrap it with `dgram.createSocket(...).bind({ fd })`). */
  bindUdpFd(options?: BindUdpFdOptions): number
  /**
   * Where an accepted connection was going before capture redirected it
   * (`SO_ORIGINAL_DST`). `family` is the connection's IP version (4 for an
   * IPv4 peer of a dual-stack listener). Throws when the connection was not redirected.
   */
  originalDestination(fd: number, family: 4 | 6): SocketAddress
}

/** Options of {@link NetnsSockets.listenFd}. */
export interface ListenFdOptions {
  /** Address to bind. Default `'0.0.0.0'`; an IPv6 address makes an IPv6 socket. */
  readonly host?: string
  /** Port to bind; 0 picks a free one. Required. */
  readonly port: number
  /** `SO_MARK` of the socket (accepted connections inherit it). Default: none. */
  readonly mark?: number
  /** `IP_TRANSPARENT` / `IPV6_TRANSPARENT`: accept connections to non-local addresses. Default `false`. */
  readonly transparent?: boolean
  /** `IP_FREEBIND` / `IPV6_FREEBIND`: bind an address not (yet) on an interface. Default `false`. */
  readonly freebind?: boolean
  /** `SO_REUSEPORT`: another socket may listen on the same address and port (a new process taking over). Default `false`. */
  readonly reusePort?: boolean
  /** For an IPv6 host: `true` refuses IPv4 peers, `false` accepts them too (mapped). Default: the kernel's (dual-stack). */
  readonly ipv6Only?: boolean
  /** `listen()` backlog. Default 511, as Node's. */
  readonly backlog?: number
}

/** Options of {@link NetnsSockets.bindUdpFd}: a listener's, but the backlog, and the port defaults to 0 (an ephemeral one). */
export interface BindUdpFdOptions extends Omit<ListenFdOptions, 'port' | 'backlog'> {
  readonly port?: number
}

/** Options of {@link NetnsSockets.connectFd}. */
export interface ConnectFdOptions extends AbortOptions {
  /** Destination IP address (no host names). Required. */
  readonly host: string
  /** Destination port, 1–65535. Required. */
  readonly port: number
  /** `SO_MARK`, set before `connect()` so the SYN carries it. Default: none. */
  readonly mark?: number
  /** Source address to bind before connecting (with `transparent`, may be another host's: source preservation). Default: the kernel's choice. */
  readonly localAddress?: string
  /** Source port to bind. Default 0 (any). */
  readonly localPort?: number
  /** `IP_TRANSPARENT` / `IPV6_TRANSPARENT`, set before bind. Default `false`. */
  readonly transparent?: boolean
  /** `IP_FREEBIND` / `IPV6_FREEBIND`. Default `false`. */
  readonly freebind?: boolean
  /** `SO_REUSEPORT`. Default `false`. */
  readonly reusePort?: boolean
}

/** A connection {@link NetnsSockets.accept} took. */
export interface AcceptedSocket {
  /** Its descriptor (non-blocking, close-on-exec, TCP_NODELAY): the receiver's to carry or close. */
  readonly fd: number
  /** The peer (canonical IP; an IPv4 peer of a dual-stack listener as IPv4, family 4). */
  readonly remote: SocketAddress
}

/** A listening socket being accepted on. */
export interface SocketAcceptor {
  /** Stops accepting and closes the listening socket. Idempotent. */
  close(): void
}
