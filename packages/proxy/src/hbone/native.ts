import { AmbientError } from '@ambientkit/core'
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
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
  /**
   * The peer's SETTINGS arrived (the first one right after the handshake was
   * accepted). Argument: its SETTINGS_MAX_CONCURRENT_STREAMS, the most streams
   * it lets this side open at once (4294967295 when it sets no limit).
   */
  Settings = 8,
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

/** Windows and limits of a session: initial stream window, connection window, max frame size, max concurrent streams we accept, and the idle and stall timeouts of its tunnels in milliseconds (absent or 0: none). */
export type NativeSettings = readonly [stream: number, connection: number, maxFrameSize: number, maxConcurrentStreams: number, tunnelIdleMs?: number, tunnelStallMs?: number]

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
}

/**
 * The numbers this side and the addon share, as the addon exports them
 * (`constants`): an addon that numbers them otherwise is refused at load.
 */
export const NATIVE_CONSTANTS = {
  events: {
    Handshake: NativeEvent.Handshake,
    Request: NativeEvent.Request,
    Response: NativeEvent.Response,
    StreamClose: NativeEvent.StreamClose,
    Close: NativeEvent.Close,
    GoAway: NativeEvent.GoAway,
    PingAck: NativeEvent.PingAck,
    Settings: NativeEvent.Settings,
  },
  outcomes: {
    Closed: NativeOutcome.Closed,
    SocketReset: NativeOutcome.SocketReset,
    StreamReset: NativeOutcome.StreamReset,
    Rejected: NativeOutcome.Rejected,
    Refused: NativeOutcome.Refused,
  },
  /** The most extra request headers {@link NativeAddon.open} takes (name, value pairs). */
  maxHeaders: 32,
} as const

/** Where a shared number differs between the addon's `constants` and {@link NATIVE_CONSTANTS}, or `undefined` when none does. */
export function constantsMismatch(exported: unknown): string | undefined {
  const compare = (expected: unknown, actual: unknown, path: string): string | undefined => {
    if (typeof expected !== 'object' || expected === null) return actual === expected ? undefined : `${path} is ${String(actual)} in the addon, ${String(expected)} here`
    if (typeof actual !== 'object' || actual === null) return `${path} is missing from the addon`
    const keys = new Set([...Object.keys(expected), ...Object.keys(actual)])
    for (const key of keys) {
      const found = compare((expected as Record<string, unknown>)[key], (actual as Record<string, unknown>)[key], `${path}.${key}`)
      if (found !== undefined) return found
    }
    return undefined
  }
  return compare(NATIVE_CONSTANTS, exported, 'constants')
}

const ADDON = 'ambient_hbone'

/** The C library this process runs on, from what is mapped into it: musl's loader, or glibc. */
function runtimeLibc(): 'glibc' | 'musl' {
  try {
    return /\/(ld-musl-|libc\.musl-)/.test(readFileSync('/proc/self/maps', 'utf8')) ? 'musl' : 'glibc'
  } catch {
    return 'glibc'
  }
}

/**
 * Where the addon may be loaded from, in order: a build from source
 * (`build/Release`, what `npm rebuild @ambientkit/proxy` makes), then the
 * prebuilt addon for this platform
 * (`prebuilds/linux-<arch>/node.napi.<glibc|musl>.node`, node-gyp-build's
 * layout). The package root is two levels above this file in the sources
 * (src/hbone/) and one above the bundle (dist/).
 */
function nativeAddonCandidates(): string[] {
  const roots = ['../../', '../'].map((path) => fileURLToPath(new URL(path, import.meta.url)))
  const prebuilt = join('prebuilds', `${process.platform}-${process.arch}`, `node.napi.${runtimeLibc()}.node`)
  return roots.flatMap((root) => [join(root, 'build', 'Release', `${ADDON}.node`), join(root, prebuilt)])
}

/** The outcome of loading: the addon and where from, or why none could be loaded. */
export type NativeLoad = { readonly addon: NativeAddon; readonly path: string } | { readonly failure: Error; readonly tried: readonly string[] }

/**
 * Loads the first candidate that exists, loads (every symbol it binds
 * resolves, and the nghttp2, OpenSSL and libuv Node links fit the addon's
 * build) and numbers its events as this file does.
 */
export function loadNativeHbone(candidates: readonly string[] = nativeAddonCandidates()): NativeLoad {
  const reasons: string[] = []
  const tried: string[] = []
  for (const path of candidates) {
    if (!existsSync(path)) continue
    tried.push(path)
    let loaded: NativeAddon & { constants?: unknown }
    try {
      loaded = createRequire(import.meta.url)(path) as NativeAddon & { constants?: unknown }
    } catch (err) {
      // The thread count is a misconfiguration every build would refuse: not a reason to try another.
      if ((err as NodeJS.ErrnoException).code === HboneErrorCode.Threads) return { failure: err as Error, tried }
      reasons.push(`${path}: ${(err as Error).message.split('\n')[0]}`)
      continue
    }
    const mismatch = constantsMismatch(loaded.constants)
    if (mismatch === undefined) return { addon: loaded, path }
    reasons.push(`${path}: ${mismatch}`)
  }
  const platform = `${process.platform}-${process.arch} (${runtimeLibc()})`
  const why = reasons.length > 0 ? reasons.join('; ') : `no prebuilt addon for ${platform}, and none built from source`
  return { failure: new Error(why), tried }
}

/** How a user gets the native data path: words that work wherever the package is installed. */
const NATIVE_HBONE_HOW_TO =
  'install a C compiler, make, python3 and the nghttp2 headers (Debian/Ubuntu: apt-get install build-essential python3 libnghttp2-dev), then run npm rebuild @ambientkit/proxy'

let loaded: NativeLoad | undefined
let warned = false

/** The one line written to stderr, once per process, when the proxy falls back to the Node data path. */
function nativeFallbackWarning(failure: Error): string {
  return `[ambientkit] the native HBONE data path is unavailable (${failure.message}); HBONE runs on the Node data path. For the native one, ${NATIVE_HBONE_HOW_TO}.`
}

/** Where the addon was loaded from, or the first place it is looked for when it did not load. */
export function nativeAddonPath(): string {
  loaded ??= loadNativeHbone()
  return 'path' in loaded ? loaded.path : nativeAddonCandidates()[0]!
}

/**
 * The loaded addon, or `undefined` (with {@link nativeHboneUnavailable} saying why) when it cannot be
 * had: then one warning line goes to stderr, once per process. Throws `ERR_AMBIENT_HBONE_THREADS` when
 * `AMBIENTKIT_HBONE_THREADS` is set to something other than a thread count: a misconfiguration, not a
 * reason to fall back to the Node data path.
 */
export function nativeHbone(): NativeAddon | undefined {
  loaded ??= loadNativeHbone()
  if ('addon' in loaded) return loaded.addon
  const failure = loaded.failure
  if ((failure as NodeJS.ErrnoException).code === HboneErrorCode.Threads) {
    throw new AmbientError(HboneErrorCode.Threads, failure.message, { cause: failure, details: { AMBIENTKIT_HBONE_THREADS: process.env.AMBIENTKIT_HBONE_THREADS } })
  }
  if (!warned) {
    warned = true
    process.stderr.write(`${nativeFallbackWarning(failure)}\n`)
  }
  return undefined
}

/**
 * How many data-path threads the native HBONE path spreads sessions over
 * (`AMBIENTKIT_HBONE_THREADS`, by default one per CPU up to four), or
 * `undefined` when the addon is not available.
 */
export function nativeHboneThreads(): number | undefined {
  return nativeHbone()?.threads()
}

/** Why the native data path cannot be used, as an error naming the fix; `undefined` when it can. */
export function nativeHboneUnavailable(): AmbientError | undefined {
  if (nativeHbone() !== undefined || loaded === undefined || 'addon' in loaded) return undefined
  return new AmbientError(HboneErrorCode.NativeUnavailable, `the native HBONE data path is unavailable (${loaded.failure.message}); ${NATIVE_HBONE_HOW_TO}`, {
    cause: loaded.failure,
    details: { tried: loaded.tried },
  })
}
