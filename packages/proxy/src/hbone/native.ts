import { AmbientError } from '@ambientkit/core'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { HboneErrorCode } from './errors'

/**
 * The native HBONE data path (native/hbone.c): mutual TLS through the
 * OpenSSL and HTTP/2 through the nghttp2 that Node itself links. Sessions
 * run on a small pool of data-path threads (`AMBIENTKIT_HBONE_THREADS`, by
 * default one per CPU up to four), each session on one thread for its whole
 * life. Bytes of a tunnel never reach JavaScript; JavaScript verifies
 * identities, authorizes each CONNECT, chooses upstreams and reads the
 * counters. Its calls are queued to the session's thread and the session's
 * events are delivered on Node's loop, in order.
 */

/** A TLS context: the SVID presented and the roots peers are verified against (every bundle's). */
export type NativeTlsContext = object & { readonly __brand: 'NativeTlsContext' }
/** One HBONE session (one TLS connection) owned by the addon. */
export type NativeSession = object & { readonly __brand: 'NativeSession' }

/** Event numbers passed to a session's callback. */
export const enum NativeEvent {
  /**
   * The TLS handshake finished (TLS 1.3, ALPN h2, chain verified by OpenSSL
   * against the context's roots). Arguments: the peer's chain as DER, leaf
   * first. Return `undefined` to accept the peer, or a string (why not) to
   * close the session.
   */
  Handshake = 1,
  /** Server: a request arrived. Arguments: stream id (the handle {@link NativeAddon.respond} and {@link NativeAddon.splice} take), `:method`, `:authority` (or ''), headers as [name, value, ...] (pseudo-headers left out). */
  Request = 2,
  /** Client: the response to {@link NativeAddon.open} arrived. Arguments: the tunnel handle open() returned, `:status`. A non-200 then ends the stream. */
  Response = 3,
  /**
   * A stream ended and its socket is closed. Arguments: its handle, outcome
   * ({@link NativeOutcome}), bytes read from the socket, bytes written to
   * it, an error message or `null`, the response status (client; 0 if none),
   * and the socket's descriptor when it was not closed but handed back
   * ({@link NativeOutcome.Refused}; otherwise -1). Every {@link NativeAddon.open}
   * that returned a handle gets one, after the session's Close if need be.
   */
  StreamClose = 4,
  /** The session closed; every stream was closed before. Argument: why, or `null` for a clean close. */
  Close = 5,
  /** The peer sent GOAWAY: open no more streams on this session. Argument: the last stream id it will process. */
  GoAway = 6,
  /** The peer acknowledged a {@link NativeAddon.ping}. No arguments. */
  PingAck = 7,
}

/** How a spliced stream ended; the same meanings as `SpliceOutcome`. */
export const enum NativeOutcome {
  Closed = 0,
  SocketReset = 1,
  StreamReset = 2,
  /** Client: the server answered with a status other than 200; server: the stream was answered with {@link NativeAddon.respond}. */
  Rejected = 3,
  /**
   * Client: the server never processed the CONNECT (it refused the stream,
   * or sent GOAWAY below its id: RFC 9113 §8.7), or it was never sent (the
   * session was closing). Nothing was read from the socket, which is handed
   * back open: the tunnel may be tried again on another session.
   */
  Refused = 4,
}

/** Windows and limits of a session: initial stream window, connection window, max frame size, max concurrent streams we accept. */
export type NativeSettings = readonly [stream: number, connection: number, maxFrameSize: number, maxConcurrentStreams: number]

export type NativeCallback = (event: NativeEvent, ...args: unknown[]) => string | undefined

/** The functions of native/hbone.c. Every fd handed in becomes the addon's, which closes it. */
export interface NativeAddon {
  /** A TLS 1.3 context, ALPN h2, a peer certificate required. PEM inputs; throws on a bad key or certificate. */
  createContext(server: boolean, certificateChainPem: string, privateKeyPem: string, rootsPem: string): NativeTlsContext
  /** Starts a client session on a connected TCP socket. */
  clientSession(context: NativeTlsContext, fd: number, settings: NativeSettings, callback: NativeCallback): NativeSession
  /** Starts a server session on an accepted TCP socket. */
  serverSession(context: NativeTlsContext, fd: number, settings: NativeSettings, callback: NativeCallback): NativeSession
  /**
   * Client: sends `CONNECT authority` with extra headers ([name, value, ...]); once 200 arrives, splices `fd` with the stream.
   * Returns the tunnel's handle (what Response and StreamClose name it by), or -1 (fd closed) when the session is known to take
   * no more streams. One that turns out to be closing on its thread ends with a {@link NativeOutcome.Refused} StreamClose that
   * hands `fd` back, as does a CONNECT the server refuses unprocessed.
   */
  open(session: NativeSession, fd: number, authority: string, headers: readonly string[]): number
  /** Server: answers a request with `status` and ends the stream. False when the session is closed (a stream gone meanwhile is left alone). */
  respond(session: NativeSession, stream: number, status: number): boolean
  /** Server: answers 200 and splices `fd` with the stream. False (fd closed) when the session is closed; fd is closed too when the stream is gone by the time the session's thread gets to it (its StreamClose was sent before). */
  splice(session: NativeSession, stream: number, fd: number): boolean
  /** Resets a stream (RST_STREAM with `code`) and its socket (RST). False when the session is closed. */
  resetStream(session: NativeSession, stream: number, code: number): boolean
  /** Sends an HTTP/2 PING (keepalive). */
  ping(session: NativeSession): void
  /** Graceful: GOAWAY, then the session closes once its open streams have ended. */
  shutdown(session: NativeSession): void
  /** Now: resets every stream and closes the connection. Idempotent. */
  destroy(session: NativeSession, reason: string | null): void
  /** Streams open now (including those whose socket is still flushing). */
  streams(session: NativeSession): number
  /** How many data-path threads sessions are spread over (`AMBIENTKIT_HBONE_THREADS`, by default one per CPU up to four). */
  threads(): number
  /** A non-blocking, close-on-exec duplicate of a socket fd: how a socket leaves Node for the addon. */
  dupFd(fd: number): number
  /** Closes a connected socket with RST (`SO_LINGER` 0): how a refused or reset connection that never became a tunnel is closed. */
  resetFd(fd: number): void
  /**
   * Accepts connections on a listening socket (which becomes the addon's)
   * and hands each one over as a non-blocking descriptor with TCP_NODELAY
   * set, with the peer's address (IPv4-mapped addresses in IPv4 form): no
   * `net.Socket` is built for a connection the addon carries.
   */
  accept(listenFd: number, callback: (fd: number, address: string, port: number, family: 4 | 6) => void): NativeAcceptor
  /** Closes the listening socket of {@link accept}. Idempotent. */
  stopAccepting(acceptor: NativeAcceptor): void
}

/** A listening socket the addon accepts on. */
export type NativeAcceptor = object & { readonly __brand: 'NativeAcceptor' }

// build/ is two levels above this file in the sources (src/hbone/) and one
// level above the bundle (dist/index.js).
const ADDON_PATHS = ['../../build/Release/ambient_hbone.node', '../build/Release/ambient_hbone.node'].map((path) => fileURLToPath(new URL(path, import.meta.url)))

let addon: NativeAddon | undefined
let failure: Error | undefined

/** Where the addon is loaded from (the first build that exists). */
export function nativeAddonPath(): string {
  return ADDON_PATHS.find((candidate) => existsSync(candidate)) ?? ADDON_PATHS[0]!
}

/**
 * The loaded addon, or `undefined` (with {@link nativeHboneUnavailable} saying why) when it was not built.
 * Throws `ERR_AMBIENT_HBONE_THREADS` when `AMBIENTKIT_HBONE_THREADS` is set to something other than
 * a thread count: a misconfiguration, not a reason to fall back to the Node data path.
 */
export function nativeHbone(): NativeAddon | undefined {
  if (addon === undefined && failure === undefined) {
    try {
      addon = createRequire(import.meta.url)(nativeAddonPath()) as NativeAddon
    } catch (err) {
      failure = err as Error
    }
  }
  if ((failure as NodeJS.ErrnoException | undefined)?.code === HboneErrorCode.Threads) {
    throw new AmbientError(HboneErrorCode.Threads, failure!.message, { cause: failure, details: { AMBIENTKIT_HBONE_THREADS: process.env.AMBIENTKIT_HBONE_THREADS } })
  }
  return addon
}

/**
 * How many data-path threads the native HBONE path spreads sessions over
 * (`AMBIENTKIT_HBONE_THREADS`, by default one per CPU up to four), or
 * `undefined` when the addon is not built.
 */
export function nativeHboneThreads(): number | undefined {
  return nativeHbone()?.threads()
}

/** Why the native data path cannot be used, as an error naming the fix; `undefined` when it can. */
export function nativeHboneUnavailable(): AmbientError | undefined {
  if (nativeHbone() !== undefined) return undefined
  return new AmbientError(
    HboneErrorCode.NativeUnavailable,
    `the native HBONE data path is not built (${failure?.message ?? 'unknown error'}); run npm run native -w @ambientkit/proxy (needs libnghttp2-dev)`,
    { cause: failure },
  )
}
