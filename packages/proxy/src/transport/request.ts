import { setMaxListeners } from 'node:events'
import { constants as h2, type IncomingHttpHeaders } from 'node:http2'
import { AmbientError, CoreErrorCode, invalidArgument, parseSocketAddress, silentLogger, type Logger, type SocketAddress } from '@ambientkit/core'
import { forwardedFor } from '../hbone/forwarded'
import { positiveInteger } from '../hbone/settings'
import type {
  CarriedConnection,
  HboneDecision,
  HboneHandshakeFailure,
  HboneRequest,
  HboneTunnelRecord,
  TransportServerOptions,
  TunnelProtocol,
  TunnelResult,
  UpstreamConnector,
} from './contract'

/**
 * The one state machine of an HBONE server's `CONNECT`, shared by every
 * transport: parse `:authority` strictly, ask `decide`, connect upstream
 * (with a timeout, abandoned when the stream or the server goes away),
 * answer 200 only once connected, carry, and report exactly one record.
 * A transport supplies the stream ({@link RequestStream}); everything a
 * peer sees (status codes, order, timeouts) is decided here, once.
 *
 * Status codes: not `CONNECT` → 400; missing or malformed `:authority` →
 * 400; not served here → 400; unknown destination → 503; denied → 401;
 * upstream connect failed or timed out → 503; `decide` threw → 500.
 */

/** One `CONNECT` as a transport's server holds it: what the state machine needs of the stream. */
export interface RequestStream {
  /** True once the stream is gone (closed, reset, its session dead). */
  readonly gone: boolean
  /** Calls `listener` when the stream goes away; returns how to stop listening. */
  onGone(listener: () => void): () => void
  /** Answers `status` and ends the stream. False when nothing could be sent (the stream is gone). */
  respond(status: number): boolean
  /**
   * Answers 200 and carries `upstream` with the stream until both sides
   * close, then calls `done` once. False when the stream went away first;
   * `upstream` is closed then.
   */
  carry(upstream: CarriedConnection, done: (result: TunnelResult) => void): boolean
  /** Resets the stream (RST_STREAM `code`, default `CONNECT_ERROR`) and what it carries. */
  reset(code?: number): void
}

/** Who is on the other end of a session: its verified identity and TCP address. */
export interface SessionPeer {
  readonly identity: string
  readonly address: SocketAddress
}

/** A server's options after defaults, shared by every request it serves. */
export interface RequestConfig {
  readonly protocol: TunnelProtocol
  readonly decide: TransportServerOptions['decide']
  readonly connect: UpstreamConnector
  readonly trustForwarded: (peerIdentity: string) => boolean
  readonly connectTimeout: number
  readonly onTunnelOpen: (request: HboneRequest) => void
  readonly onTunnel: (record: HboneTunnelRecord) => void
  readonly onHandshakeFailure: (failure: HboneHandshakeFailure) => void
  readonly logger: Logger
  /** Aborted when the server closes: pending upstream connects give up. */
  readonly closing: AbortSignal
  /** Closes an upstream connection that will not be carried (with RST). */
  readonly discard: (upstream: CarriedConnection) => void
}

/** Checks the options every server takes and fills their defaults. */
export function requestConfig(
  options: Pick<TransportServerOptions, 'decide' | 'connect' | 'trustForwarded' | 'connectTimeout' | 'onTunnelOpen' | 'onTunnel' | 'onHandshakeFailure' | 'logger'>,
  protocol: TunnelProtocol,
  closing: AbortSignal,
  discard: (upstream: CarriedConnection) => void,
): RequestConfig {
  if (typeof options.decide !== 'function') throw invalidArgument('decide', options.decide, 'a function')
  if (typeof options.connect !== 'function') throw invalidArgument('connect', options.connect, 'a function resolving with the upstream connection')
  // Every pending upstream connect listens on it: there is no meaningful limit.
  setMaxListeners(0, closing)
  return {
    protocol,
    decide: options.decide,
    connect: options.connect,
    trustForwarded: options.trustForwarded ?? (() => false),
    connectTimeout: positiveInteger(options.connectTimeout, 'connectTimeout', 10_000),
    onTunnelOpen: options.onTunnelOpen ?? (() => {}),
    onTunnel: options.onTunnel ?? (() => {}),
    onHandshakeFailure: options.onHandshakeFailure ?? (() => {}),
    logger: options.logger ?? silentLogger,
    closing,
    discard,
  }
}

/** A request's head, as the transport read it. */
export interface RequestHead {
  readonly method: unknown
  readonly authority: unknown
  readonly headers: IncomingHttpHeaders
  /** `performance.now()` when the `CONNECT` arrived. */
  readonly started: number
}

/** Serves one `CONNECT` from `peer` on `stream`. Never rejects: every failure is answered and reported. */
export async function serveRequest(config: RequestConfig, stream: RequestStream, peer: SessionPeer, head: RequestHead): Promise<void> {
  const raw = typeof head.authority === 'string' && head.authority !== '' ? head.authority : undefined
  // What the closures below capture lives as long as the tunnel: the start time, not the head and its headers.
  const started = head.started
  const finish = (fields: TunnelRecordFields): void => reportTunnel(config, peer, started, fields)
  const reject = (status: number, reason: string, extra: Partial<HboneTunnelRecord> = {}): void => {
    const answered = !stream.gone && stream.respond(status)
    finish({ status: answered ? status : 0, outcome: answered ? 'rejected' : 'cancelled', reason, authority: raw, ...extra })
  }
  try {
    if (!wellFormedFields(head.headers)) {
      stream.reset(h2.NGHTTP2_PROTOCOL_ERROR)
      return finish({ status: 0, outcome: 'rejected', reason: 'malformed-field', authority: raw })
    }
    const destination = connectDestination(head.method, raw)
    if (typeof destination === 'string') return reject(400, destination)
    const request = buildRequest(head.headers, peer, destination, config.trustForwarded(peer.identity), config.protocol)

    let decision: HboneDecision
    try {
      decision = await config.decide(request)
    } catch (err) {
      config.logger.error({ err, peer: peer.identity, destination: raw }, 'HBONE decide hook threw')
      return reject(500, 'decide-failed', { destination, error: err as Error })
    }
    if (decision.action !== 'serve') {
      const refusal = refusalOf(decision, config.logger)
      return reject(refusal.status, refusal.reason, { destination, ...(refusal.policy === undefined ? {} : { policy: refusal.policy }) })
    }
    const served = { destination, context: decision.context, ...(decision.policy === undefined ? {} : { policy: decision.policy }) }
    if (stream.gone) return finish({ status: 0, outcome: 'cancelled', ...served })

    let upstream: CarriedConnection
    try {
      upstream = await connectUpstream(config, stream, destination, request, decision.context)
    } catch (err) {
      if (stream.gone) return finish({ status: 0, outcome: 'cancelled', ...served, error: err as Error })
      config.logger.debug({ err, destination: raw }, 'HBONE upstream connect failed')
      return reject(503, 'upstream-connect-failed', { ...served, error: err as Error })
    }
    if (stream.gone) {
      config.discard(upstream)
      return finish({ status: 0, outcome: 'cancelled', ...served })
    }
    const carried = stream.carry(upstream, (result) =>
      finish({
        status: 200,
        outcome: result.outcome,
        ...served,
        bytesReceived: result.socketBytesWritten,
        bytesSent: result.socketBytesRead,
        ...(result.error === undefined ? {} : { error: result.error }),
      }),
    )
    if (!carried) return finish({ status: 0, outcome: 'cancelled', ...served })
    reportOpen(config, request)
  } catch (err) {
    // A bug of ours, not the peer's: the stream must not be left hanging.
    config.logger.error({ err, peer: peer.identity }, 'HBONE stream handling failed')
    stream.reset()
  }
}

/**
 * Connects a served request's upstream; gives up when the stream goes, the
 * server closes or `connectTimeout` passes. A function of its own, as
 * {@link reportOpen} is: the callback an established tunnel keeps then
 * holds neither the attempt's controller, timer and listeners nor the
 * request.
 */
async function connectUpstream(config: RequestConfig, stream: RequestStream, destination: SocketAddress, request: HboneRequest, context: unknown): Promise<CarriedConnection> {
  const attempt = new AbortController()
  const abort = (message: string) => (): void => attempt.abort(new AmbientError(CoreErrorCode.Aborted, message))
  const onClosing = abort('HBONE server closed before upstream connected')
  const stopWatching = stream.onGone(abort('HBONE stream closed before upstream connected'))
  const timer = setTimeout(abort(`upstream connect timed out after ${config.connectTimeout} ms`), config.connectTimeout)
  config.closing.addEventListener('abort', onClosing, { once: true })
  if (config.closing.aborted) onClosing()
  try {
    return await config.connect(destination, { signal: attempt.signal, request, context, tunnel: stream })
  } finally {
    clearTimeout(timer)
    stopWatching()
    config.closing.removeEventListener('abort', onClosing)
  }
}

function reportOpen(config: RequestConfig, request: HboneRequest): void {
  report(config.logger, () => config.onTunnelOpen(request))
}

/** What a tunnel's record says beyond its peer and duration. */
export type TunnelRecordFields = Pick<HboneTunnelRecord, 'status' | 'outcome'> & Partial<HboneTunnelRecord>

/** Reports one `CONNECT` to `onTunnel`: its peer, how long since `started` (`performance.now()`), and `fields`. */
export function reportTunnel(config: Pick<RequestConfig, 'protocol' | 'logger' | 'onTunnel'>, peer: SessionPeer, started: number, fields: TunnelRecordFields): void {
  const record: HboneTunnelRecord = {
    protocol: config.protocol,
    peerIdentity: peer.identity,
    peerAddress: peer.address,
    bytesReceived: 0,
    bytesSent: 0,
    durationMs: performance.now() - started,
    ...fields,
  }
  report(config.logger, () => config.onTunnel(record))
}

/**
 * A `CONNECT` to `destination` from `peer` as `decide` sees it. `forwarded`
 * is believed only from a `trusted` peer, and removed from the headers otherwise.
 */
export function buildRequest(headers: IncomingHttpHeaders, peer: SessionPeer, destination: SocketAddress, trusted: boolean, protocol: TunnelProtocol = 'HBONE'): HboneRequest {
  const single = (name: string): string | undefined => {
    const value = headers[name]
    return typeof value === 'string' ? value : undefined
  }
  const visible: IncomingHttpHeaders = { ...headers }
  let original: string | undefined
  if (trusted) original = forwardedFor(single('forwarded'))
  else delete visible.forwarded
  return {
    protocol,
    peerIdentity: peer.identity,
    peerAddress: peer.address,
    destination,
    baggage: single('baggage'),
    traceparent: single('traceparent'),
    forwardedFor: original,
    headers: visible,
  }
}

/**
 * The destination of a request, parsed strictly from `:authority`
 * (`ip:port` or `[ipv6]:port`), or why it is answered 400: `not-connect`
 * for another method, `bad-authority` for a missing or malformed authority.
 */
export function connectDestination(method: unknown, authority: unknown): SocketAddress | 'not-connect' | 'bad-authority' {
  if (method !== 'CONNECT') return 'not-connect'
  if (typeof authority !== 'string') return 'bad-authority'
  try {
    return parseSocketAddress(authority, ':authority')
  } catch {
    return 'bad-authority'
  }
}

/** How a decision other than `serve` is answered: not served 400, unknown 503, denied 401, anything else 500. */
export function refusalOf(decision: Exclude<HboneDecision, { readonly action: 'serve' }>, logger: Logger): { status: number; reason: string; policy?: string } {
  switch (decision.action) {
    case 'not-served':
      return { status: 400, reason: decision.reason }
    case 'unknown':
      return { status: 503, reason: decision.reason }
    case 'deny':
      return { status: 401, reason: decision.reason, ...(decision.policy === undefined ? {} : { policy: decision.policy }) }
    default:
      logger.error({ decision }, 'HBONE decide hook returned an unknown action')
      return { status: 500, reason: 'decide-failed' }
  }
}

/** Calls an observer hook; one that throws is logged, never breaks a tunnel. */
export function report(logger: Logger, hook: () => void): void {
  try {
    hook()
  } catch (err) {
    logger.error({ err }, 'HBONE observer hook threw')
  }
}

/**
 * Fields Node's HTTP/2 server keeps once, dropping repeats (its
 * `kSingleValueHeaders`): the native server reads them the same way, so a
 * `decide` hook sees the same request whatever the data path.
 */
const SINGLE_VALUE = new Set([
  'access-control-allow-credentials', 'access-control-max-age', 'access-control-request-method', 'age', 'authorization',
  'content-encoding', 'content-language', 'content-length', 'content-location', 'content-md5', 'content-range', 'content-type',
  'date', 'dnt', 'etag', 'expires', 'from', 'host', 'if-match', 'if-modified-since', 'if-none-match', 'if-range',
  'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'range', 'referer', 'retry-after',
  'tk', 'upgrade-insecure-requests', 'user-agent', 'x-content-type-options',
])

/**
 * The request's headers as Node's server gives them: lower-case names on an
 * object without a prototype, pseudo-headers included, repeats kept once,
 * joined with `; ` (cookie), gathered in an array (set-cookie) or joined
 * with `, ` (every other field).
 */
export function headersOf(method: unknown, authority: unknown, flat: readonly unknown[]): IncomingHttpHeaders {
  const headers = Object.create(null) as Record<string, string | string[]>
  if (typeof method === 'string') headers[':method'] = method
  if (typeof authority === 'string' && authority !== '') headers[':authority'] = authority
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const name = String(flat[i]).toLowerCase()
    const value = String(flat[i + 1])
    const previous = headers[name]
    if (previous === undefined) headers[name] = name === 'set-cookie' ? [value] : value
    else if (name === 'set-cookie') (previous as string[]).push(value)
    else if (SINGLE_VALUE.has(name)) continue
    else headers[name] = `${String(previous)}${name === 'cookie' ? '; ' : ', '}${value}`
  }
  return headers as IncomingHttpHeaders
}

/** RFC 9113 §8.2.1: a field name is lower-case token characters, not empty. */
const FIELD_NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/
/** RFC 9113 §8.2.1: no NUL, CR or LF, and no whitespace at either end. */
const FIELD_VALUE = /^(?:[^\0\r\n \t](?:[^\0\r\n]*[^\0\r\n \t])?)?$/

/**
 * Whether every regular field of a request is well formed (RFC 9113
 * §8.2.1). One that is not makes the request malformed, a stream error
 * (§8.1.1), whatever nghttp2 version (Node's or the addon's) let it through.
 */
export function wellFormedFields(headers: IncomingHttpHeaders): boolean {
  for (const [name, value] of Object.entries(headers)) {
    if (name.startsWith(':')) continue
    if (!FIELD_NAME.test(name)) return false
    for (const one of Array.isArray(value) ? value : [value]) if (typeof one === 'string' && !FIELD_VALUE.test(one)) return false
  }
  return true
}
