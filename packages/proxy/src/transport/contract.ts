import type { IncomingHttpHeaders } from 'node:http2'
import type { Socket } from 'node:net'
import type { AbortOptions, Closable, Logger, SocketAddress } from '@ambientkit/core'
import type { IdentityManager } from '@ambientkit/identity'
import type { HboneWindows } from '../hbone/constants'

/**
 * The contract every HBONE transport implements: what carries a tunnel
 * between two workloads. A client opens a tunnel to a destination for a
 * source identity and carries an application's connection through it; a
 * server serves tunnels with a handler that decides each `CONNECT` and
 * connects upstream. The workload proxy knows nothing else of a transport,
 * so a new one is added by implementing this and passing the contract
 * suite (packages/proxy/test/transport-contract.ts), with no change to the
 * proxy.
 *
 * Implementations: {@link createNodeTransport} (Node's `tls` and `http2`),
 * {@link createNativeTransport} (the addon's OpenSSL and nghttp2 on
 * data-path threads), {@link createSameNodeTransport} (both workloads in
 * this process: no wire, sockets spliced in-process).
 */
export interface HboneTransport {
  /** What carries the bytes: `'node'`, `'native'`, `'same-node'`, or a name of your own (shown in `/config_dump`). */
  readonly name: string
  createClient(options: TransportClientOptions): TransportClient
  /** Resolves once the server can serve (the SVID it presents is at hand). */
  createServer(options: TransportServerOptions): Promise<TransportServer>
}

/**
 * A TCP connection a transport carries: a connected socket, or its
 * descriptor. Given to a transport, it becomes the transport's. A transport
 * that copies bytes natively takes descriptors only (it throws
 * `ERR_AMBIENT_INVALID_ARGUMENT` for a socket): get them from
 * `NetnsSockets.accept` and `connectFd` (`@ambientkit/redirect`'s
 * `openNetns()` or `ownNetnsSockets()`).
 */
export type CarriedConnection = Socket | number

/** Options every transport's client takes. */
export interface TransportClientOptions {
  /** Holds the SVID each session presents (its source identity's) and the bundles servers are verified with. */
  readonly identities: IdentityManager
  /**
   * Opens the TCP connection of a new session. The workload proxy passes
   * one that connects inside the pod's network namespace with mark 0x539.
   * Default: a plain TCP connect from this process's namespace.
   */
  readonly connectSession?: SessionConnector
  /** Tunnels per session before another session is opened (also capped by the server's SETTINGS_MAX_CONCURRENT_STREAMS). Default 100, as ztunnel. */
  readonly maxStreamsPerSession?: number
  /** Milliseconds an unused session stays pooled. Default 300 000 (ztunnel's 5 minutes). */
  readonly idleTimeout?: number
  /** Milliseconds between HTTP/2 PINGs on a session. Default 10 000. */
  readonly keepaliveInterval?: number
  /** Milliseconds without a PING answer before the session is destroyed. Default 20 000. */
  readonly keepaliveTimeout?: number
  /** Milliseconds to establish a session (TCP, TLS, first SETTINGS). Default 10 000. */
  readonly sessionTimeout?: number
  /** Flow-control windows and frame size. Default {@link DEFAULT_HBONE_WINDOWS}. */
  readonly windows?: Partial<HboneWindows>
  /** Default: silent. */
  readonly logger?: Logger
}

/** Opens the TCP connection of a session to `address`, resolving once connected. */
export type SessionConnector = (address: SocketAddress, options: SessionConnectOptions) => Promise<CarriedConnection>

/** Options passed to a {@link SessionConnector}. */
export interface SessionConnectOptions {
  /** Aborted when the session attempt is abandoned (client closed or timed out). */
  readonly signal: AbortSignal
  /** The source identity of the session. */
  readonly identity: string
  /** The source address of the session: bind to it. */
  readonly sourceAddress?: string
}

/** Options of {@link TransportClient.open}. */
export interface OpenOptions extends AbortOptions {
  /** The source identity: its SVID is presented, and it is part of the pool key. */
  readonly identity: string
  /** SPIFFE IDs the server may present (at least one). */
  readonly expectedIdentities: readonly string[]
  /** The source IP: the session is bound to it, and it is part of the pool key. */
  readonly sourceAddress?: string
  /** The HBONE peer. Default `<destination ip>:15008`. */
  readonly via?: SocketAddress
  /** Extra request headers (`baggage`, `traceparent`, `forwarded`...). Pseudo-headers are refused. */
  readonly headers?: Readonly<Record<string, string>>
}

/** The client half of a transport: pooled sessions carrying tunnels. */
export interface TransportClient extends Closable {
  /**
   * Carries `app` through a tunnel to `destination`: takes (or opens) a
   * pooled session, sends `CONNECT`, and resolves once the server answered
   * 200; bytes then flow both ways until the tunnel ends, which
   * {@link HboneTunnel.onClose} reports. `app` is the transport's from the
   * call on: whenever the promise rejects, its connection has been reset.
   *
   * Rejects with `ERR_AMBIENT_HBONE_STATUS` (`details.status`) on a non-200
   * answer, `ERR_AMBIENT_HBONE_IDENTITY_MISMATCH` when the server is not one
   * of `expectedIdentities`, `ERR_AMBIENT_HBONE_CONNECT_FAILED` or
   * `ERR_AMBIENT_HBONE_ALPN` when no session could be opened,
   * `ERR_AMBIENT_HBONE_STREAM` when the stream or session failed first,
   * `ERR_AMBIENT_ABORTED` (also when the application closed first) and
   * `ERR_AMBIENT_CLOSED`. A `CONNECT` the server did not process
   * (REFUSED_STREAM, a GOAWAY below its stream: RFC 9113 §8.7) reached
   * nothing and is sent once more on another session.
   */
  open(app: CarriedConnection, destination: SocketAddress, options: OpenOptions): Promise<HboneTunnel>
  /** The pooled sessions. */
  stats(): readonly HboneSessionStats[]
  /**
   * What a tunnel to `via` would cross: `'HBONE'` or `'local'`, for the
   * access log of one that fails before it exists. Default (absent): `'HBONE'`.
   */
  protocolFor?(via: SocketAddress): TunnelProtocol
  /** Destroys every session (resetting their tunnels) and resolves once they are closed. Idempotent. */
  close(): Promise<void>
}

/** An established tunnel, as its client holds it. */
export interface HboneTunnel {
  /** What the hop between the workloads is: `'HBONE'` (mTLS on the wire) or `'local'` (in-process, nothing on the wire). */
  readonly protocol: TunnelProtocol
  /** Resets the tunnel (RST_STREAM `CONNECT_ERROR`) and the application's connection (RST). */
  reset(): void
  /** Calls `listener` once the tunnel has closed (at once if it has). One listener: the tunnel's holder. */
  onClose(listener: (result: TunnelResult) => void): void
}

/** `'HBONE'` (mTLS HTTP/2 on the wire) or `'local'` (in-process handover, nothing on the wire). */
export type TunnelProtocol = 'HBONE' | 'local'

/** How a carried connection ended, on either end of a tunnel. */
export type TunnelOutcome =
  /** Both directions were half-closed (FIN ↔ END_STREAM) and drained. */
  | 'closed'
  /** The TCP side failed or was reset first; the stream was reset with CONNECT_ERROR. */
  | 'socket-reset'
  /** The stream was reset (or its session died) first; the TCP side was reset. */
  | 'stream-reset'

/** What a tunnel carried, once both its sides are closed. */
export interface TunnelResult {
  readonly outcome: TunnelOutcome
  /** The first error seen on either side, if any. */
  readonly error?: Error
  /** Bytes read from the TCP connection (sent into the tunnel). */
  readonly socketBytesRead: number
  /** Bytes written to the TCP connection (received from the tunnel). */
  readonly socketBytesWritten: number
}

/** Options every transport's server takes. */
export interface TransportServerOptions {
  /** Holds the SVID presented (kept renewed while the server runs) and the bundles clients are verified with. */
  readonly identities: IdentityManager
  /** The SPIFFE ID whose current SVID is presented; a rotated SVID is presented from the next session on. */
  readonly identity: string
  /** The addresses this server serves (the workload's): how an in-process transport finds it. Default: none. */
  readonly addresses?: readonly string[]
  /** Decides each `CONNECT` (serve / not-served / unknown / deny). */
  readonly decide: (request: HboneRequest) => HboneDecision | Promise<HboneDecision>
  /** Opens the upstream connection of a tunnel. */
  readonly connect: UpstreamConnector
  /** Peers whose `forwarded: for=` header is believed (a waypoint). Default: none. */
  readonly trustForwarded?: (peerIdentity: string) => boolean
  /** Upstream connect timeout in milliseconds (then 503). Default 10 000. */
  readonly connectTimeout?: number
  /** SETTINGS_MAX_CONCURRENT_STREAMS announced to clients. Default 1000. */
  readonly maxConcurrentStreams?: number
  /** Flow-control windows and frame size. Default {@link DEFAULT_HBONE_WINDOWS}. */
  readonly windows?: Partial<HboneWindows>
  /**
   * Milliseconds from accepting a connection to the end of its TLS
   * handshake; then it is closed and reported (`reason: 'timeout'`).
   * Default 10 000.
   */
  readonly handshakeTimeout?: number
  /**
   * Connections still handshaking from one source address; more are closed
   * at once and reported (`reason: 'shed'`), so a flood from one source
   * never keeps other sources out. Default 64.
   */
  readonly maxPendingHandshakesPerSource?: number
  /** Connections still handshaking in total; more are closed at once and reported (`reason: 'shed'`). Default 512. */
  readonly maxPendingHandshakes?: number
  /** HBONE sessions one peer identity holds open; a session above it is closed after its handshake and reported (`reason: 'shed'`). Default 128. */
  readonly maxSessionsPerPeer?: number
  /** Tunnels one peer identity holds open over all its sessions; a `CONNECT` above it is answered 429. Default 10 000. */
  readonly maxStreamsPerPeer?: number
  /**
   * A session ends with the certificates of its handshake: when the
   * earlier of the two expires, the server sends GOAWAY (no new tunnels)
   * and destroys the session this many milliseconds later if tunnels are
   * still open. Default 30 000.
   */
  readonly expiredSessionDrainTimeout?: number
  /** Milliseconds a tunnel may move no byte either way; then both its sides are reset (`ERR_AMBIENT_HBONE_TUNNEL_TIMEOUT` in its record). Default 3 600 000 (an hour). */
  readonly tunnelIdleTimeout?: number
  /**
   * Milliseconds a tunnel may hold bytes its peer takes none of (a reader
   * that stopped; what it holds meanwhile is bounded by the flow-control
   * windows); then both its sides are reset. Default 120 000.
   */
  readonly tunnelStallTimeout?: number
  /** Called when a tunnel is established (the upstream connected, 200 sent). */
  readonly onTunnelOpen?: (request: HboneRequest) => void
  /** Called once per `CONNECT`, when it is rejected or its tunnel has closed. */
  readonly onTunnel?: (record: HboneTunnelRecord) => void
  /** Called when a connection fails before it can carry a tunnel. */
  readonly onHandshakeFailure?: (failure: HboneHandshakeFailure) => void
  /** Default: silent. */
  readonly logger?: Logger
}

/** The limits a server puts on what peers can make it hold (see {@link TransportServerOptions} for each and its default). */
export type HboneServerLimits = Pick<
  TransportServerOptions,
  | 'handshakeTimeout'
  | 'maxPendingHandshakesPerSource'
  | 'maxPendingHandshakes'
  | 'maxSessionsPerPeer'
  | 'maxStreamsPerPeer'
  | 'expiredSessionDrainTimeout'
  | 'tunnelIdleTimeout'
  | 'tunnelStallTimeout'
>

/** The server half of a transport. */
export interface TransportServer extends Closable {
  /**
   * Serves an accepted TCP connection (it becomes the server's). `remote`
   * is its peer, which a descriptor does not tell (a socket does).
   */
  handle(connection: CarriedConnection, remote?: SocketAddress): void
  stats(): HboneServerStats
  /**
   * Graceful shutdown: refuses new connections, sends GOAWAY on every
   * session (clients open new tunnels elsewhere) and resolves once the open
   * tunnels have finished and their sessions closed. Race it with a
   * deadline and call {@link close} for what is left.
   */
  drain(): Promise<void>
  /** Resets every tunnel and closes every session and connection. Idempotent. */
  close(): Promise<void>
}

/** What a server knows about one `CONNECT` when it asks `decide`. */
export interface HboneRequest {
  /** How it arrived: `'HBONE'` (mTLS on the wire) or `'local'` (in-process, from a workload of this process). */
  readonly protocol: TunnelProtocol
  /** The peer's SPIFFE ID, verified during the mTLS handshake (or vouched for in-process). */
  readonly peerIdentity: string
  /** The TCP peer of the session (canonical IP). */
  readonly peerAddress: SocketAddress
  /** The tunnel's destination, parsed strictly from `:authority`. */
  readonly destination: SocketAddress
  /** W3C `baggage` header, if present. */
  readonly baggage?: string
  /** W3C `traceparent` header, if present. */
  readonly traceparent?: string
  /**
   * The original client address from `forwarded: for=...` (RFC 7239), set
   * only when `trustForwarded` trusts this peer: an ordinary peer cannot
   * claim another source address.
   */
  readonly forwardedFor?: string
  /**
   * The `host=` of `forwarded` (the service the client connected to, as
   * ztunnel sends it), from any peer: it only names a service, to be
   * checked against the destination's own.
   */
  readonly forwardedHost?: string
  /** The request headers. `forwarded` is removed unless the peer is trusted. */
  readonly headers: Readonly<IncomingHttpHeaders>
}

/** The answer of `decide`. */
export type HboneDecision =
  /** Connect upstream and answer 200 once connected. `context` is handed to the connector. */
  | { readonly action: 'serve'; readonly context?: unknown; readonly policy?: string }
  /** The destination is not served by this listener: 400. */
  | { readonly action: 'not-served'; readonly reason: string }
  /** The destination is unknown: 503. */
  | { readonly action: 'unknown'; readonly reason: string }
  /** Denied by authorization: 401. `policy` names the deciding policy for logs. */
  | { readonly action: 'deny'; readonly reason: string; readonly policy?: string }

/** Options passed to an {@link UpstreamConnector}. */
export interface UpstreamConnectOptions {
  /** Aborted when the tunnel's stream goes away, the connect times out or the server closes. */
  readonly signal: AbortSignal
  /** The request being served. */
  readonly request: HboneRequest
  /** The `context` of the `serve` decision. */
  readonly context?: unknown
  /**
   * The tunnel being served. Resetting it resets the stream and, once
   * connected, the upstream connection: how a proxy closes a tunnel that a
   * policy change now denies.
   */
  readonly tunnel: { reset(): void }
}

/**
 * Opens the upstream TCP connection of a tunnel and resolves once it is
 * connected; the server owns it from then on. The workload proxy passes one
 * that connects inside the pod's network namespace with mark 0x539.
 */
export type UpstreamConnector = (destination: SocketAddress, options: UpstreamConnectOptions) => Promise<CarriedConnection>

/** Why a `CONNECT` ended, as a server reports it. */
export type HboneTunnelOutcome =
  | TunnelOutcome
  /** Answered with a non-200 status (see `status` and `reason`). */
  | 'rejected'
  /** The peer reset the stream (or the session died) before the upstream connect finished. */
  | 'cancelled'

/** One finished tunnel (or rejected request): the facts for access logs and metrics. */
export interface HboneTunnelRecord {
  /** How the tunnel crossed: `'HBONE'` or `'local'` (in-process). */
  readonly protocol: TunnelProtocol
  readonly peerIdentity: string
  readonly peerAddress: SocketAddress
  /** The parsed destination; absent when `:authority` was missing or malformed. */
  readonly destination?: SocketAddress
  /** The raw `:authority`, for requests whose destination could not be parsed. */
  readonly authority?: string
  /** The HTTP status answered; 0 when none was sent. */
  readonly status: number
  readonly outcome: HboneTunnelOutcome
  /** A short reason (`not-connect`, `bad-authority`, `not-served`, `unknown-destination`, `denied`, `upstream-connect-failed`, ...). */
  readonly reason?: string
  /** The deciding policy: the one that denied, or the one that allowed when the decision named it. */
  readonly policy?: string
  /** The `context` of the `serve` decision, when there was one. */
  readonly context?: unknown
  /** Bytes the peer sent through the tunnel (written upstream). */
  readonly bytesReceived: number
  /** Bytes sent to the peer (read from upstream). */
  readonly bytesSent: number
  /** From the arrival of the `CONNECT` to the close of both sides, in milliseconds. */
  readonly durationMs: number
  readonly error?: Error
}

/** A connection that failed before any tunnel: TLS handshake, ALPN or identity, or refused by a limit. */
export interface HboneHandshakeFailure {
  /** The TCP peer, when known. */
  readonly peerAddress?: SocketAddress
  /**
   * `'tls'`, `'alpn'`, `'identity'`: the handshake failed; `'timeout'`: it
   * did not finish within `handshakeTimeout`; `'shed'`: a limit refused the
   * connection (pending handshakes, sessions per peer).
   */
  readonly reason: 'tls' | 'alpn' | 'identity' | 'timeout' | 'shed'
  readonly error: Error
}

/** Counts of what a server holds open, for metrics and leak checks. */
export interface HboneServerStats {
  /** TCP connections handed to the server and not yet closed (handshaking or carrying a session). */
  readonly connections: number
  /** Established sessions. */
  readonly sessions: number
  /** `CONNECT` streams being decided, connecting upstream or carrying bytes. */
  readonly tunnels: number
}

/** A pooled session, as a client's `stats()` lists it. */
export interface HboneSessionStats {
  readonly key: string
  readonly peerIdentity: string
  readonly streams: number
}
