import type { Socket } from 'node:net'
import {
  AmbientError,
  CoreErrorCode,
  abortError,
  formatSocketAddress,
  invalidArgument,
  type SocketAddress,
} from '@ambientkit/core'
import { checkExpected, requestHeaders } from '../hbone/client'
import { HboneErrorCode } from '../hbone/errors'
import { startSocketSplice, type SocketSpliceResult } from '../splice-sockets'
import type { TunnelTimeouts } from '../splice-timers'
import { asSocket, resetConnection } from './connection'
import type {
  CarriedConnection,
  HboneServerStats,
  HboneSessionStats,
  HboneTransport,
  HboneTunnel,
  OpenOptions,
  TransportClient,
  TransportClientOptions,
  TransportServer,
  TransportServerOptions,
  TunnelProtocol,
  TunnelResult,
} from './contract'
import { requestConfig, serveRequest, type RequestConfig, type RequestStream } from './request'
import { SettlingTunnel } from './tunnel'

/** Options of {@link createSameNodeTransport}. */
export interface SameNodeTransportOptions {
  /**
   * The transport for destinations no server of this transport serves, and
   * the one whose servers also take connections from the wire. Default:
   * none (such opens fail with `ERR_AMBIENT_HBONE_CONNECT_FAILED`, and
   * servers refuse connections from the wire).
   */
  readonly fallback?: HboneTransport
}

/**
 * The same-node transport, as ztunnel's same-node fast path: when the
 * destination is a workload served in this process, nothing needs to cross
 * a wire, so there is nothing to encrypt. The destination's server decides
 * the `CONNECT` with the source's identity exactly as if it had arrived
 * over mTLS (the same state machine, answers and records; its records say
 * `protocol: 'local'`), connects upstream, and the application's and
 * upstream's sockets are spliced in-process.
 *
 * Only code of this process can open such a tunnel, and it vouches for the
 * source identity it names: give this transport to workload proxies (which
 * hold their own workload's identity), not to untrusted code. Servers are
 * found by the `addresses` they were created with; the `via` of an open
 * (default: the destination's address) selects one.
 *
 * @example
 * ```ts
 * import { createNativeTransport, createSameNodeTransport } from '@ambientkit/proxy'
 *
 * // Pods of this node meet in-process; every other destination over native HBONE.
 * const transport = createSameNodeTransport({ fallback: createNativeTransport() })
 * ```
 */
export function createSameNodeTransport(options: SameNodeTransportOptions = {}): HboneTransport {
  if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
  return new SameNodeTransport(options.fallback)
}

class SameNodeTransport implements HboneTransport {
  readonly name: string
  readonly #fallback: HboneTransport | undefined
  /** The local servers by the addresses they serve. */
  readonly #servers = new Map<string, LocalServer>()

  constructor(fallback: HboneTransport | undefined) {
    this.#fallback = fallback
    this.name = fallback === undefined ? 'same-node' : `same-node+${fallback.name}`
  }

  createClient(options: TransportClientOptions): TransportClient {
    const fallback = this.#fallback?.createClient(options)
    return new LocalClient(this.#servers, fallback)
  }

  async createServer(options: TransportServerOptions): Promise<TransportServer> {
    const wire = await this.#fallback?.createServer(options)
    const server = new LocalServer(options, wire, () => {
      for (const address of options.addresses ?? []) if (this.#servers.get(address) === server) this.#servers.delete(address)
    })
    for (const address of options.addresses ?? []) this.#servers.set(address, server)
    return server
  }
}

/** A server of this process, found by its addresses: its requests come in-process (and from the wire through its fallback's server). */
class LocalServer implements TransportServer {
  readonly identity: string
  readonly config: RequestConfig
  readonly #wire: TransportServer | undefined
  readonly #unregister: () => void
  readonly #closing = new AbortController()
  /** In-process tunnels being decided, connected or carried. */
  readonly tunnels = new Set<LocalRequestStream>()
  accepting = true
  #closed: Promise<void> | undefined

  constructor(options: TransportServerOptions, wire: TransportServer | undefined, unregister: () => void) {
    this.identity = options.identity
    this.config = requestConfig(options, 'local', this.#closing.signal, resetConnection)
    this.#wire = wire
    this.#unregister = unregister
  }

  handle(connection: CarriedConnection, remote?: SocketAddress): void {
    if (this.#wire !== undefined) this.#wire.handle(connection, remote)
    else resetConnection(connection)
  }

  stats(): HboneServerStats {
    const wire = this.#wire?.stats() ?? { connections: 0, sessions: 0, tunnels: 0 }
    return { ...wire, tunnels: wire.tunnels + this.tunnels.size }
  }

  async drain(): Promise<void> {
    // As a GOAWAY: no new tunnels; open ones finish.
    this.accepting = false
    this.#unregister()
    const finished = [...this.tunnels].map((tunnel) => tunnel.finished)
    await Promise.all([this.#wire?.drain(), ...finished])
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.accepting = false
      this.#unregister()
      this.#closing.abort(new AmbientError(CoreErrorCode.Closed, 'HBONE server is closed'))
      for (const stream of this.tunnels) stream.reset()
      await Promise.all([this.#wire?.close(), ...[...this.tunnels].map((tunnel) => tunnel.finished)])
    })()
    return this.#closed
  }
}

class LocalClient implements TransportClient {
  readonly #servers: ReadonlyMap<string, LocalServer>
  readonly #fallback: TransportClient | undefined
  readonly #opened = new Set<LocalRequestStream>()
  #closed = false

  constructor(servers: ReadonlyMap<string, LocalServer>, fallback: TransportClient | undefined) {
    this.#servers = servers
    this.#fallback = fallback
  }

  async open(app: CarriedConnection, destination: SocketAddress, options: OpenOptions): Promise<HboneTunnel> {
    const via = options.via ?? destination
    const server = this.#servers.get(via.address)
    if (server === undefined && this.#fallback !== undefined) return this.#fallback.open(app, destination, options)
    // Wrapped once: the socket owns the descriptor from here on (a second wrapper would close it twice).
    const socket = asSocket(app, true)
    try {
      if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
      if (this.#closed) throw new AmbientError(CoreErrorCode.Closed, 'HBONE client is closed')
      if (options.signal?.aborted === true) throw abortError(options.signal, 'HBONE connect')
      if (typeof options.identity !== 'string' || !options.identity.startsWith('spiffe://')) throw invalidArgument('identity', options.identity, 'the source SPIFFE ID')
      const expected = checkExpected(options.expectedIdentities)
      const authority = formatSocketAddress(destination)
      const headers = requestHeaders(authority, options.headers)
      const peer = formatSocketAddress(via)
      if (server === undefined) {
        throw new AmbientError(HboneErrorCode.ConnectFailed, `HBONE session to ${peer} failed: no workload of this process serves ${via.address}`, { details: { peer } })
      }
      if (!expected.includes(server.identity)) {
        throw new AmbientError(HboneErrorCode.IdentityMismatch, `HBONE peer ${peer} presented ${server.identity}, expected one of ${expected.join(', ')}`, {
          details: { peer, identity: server.identity, expected },
        })
      }
      if (!server.accepting) {
        throw new AmbientError(HboneErrorCode.Stream, `HBONE CONNECT ${authority} was refused: the destination's server is going away`, { details: { authority } })
      }
      const stream = new LocalRequestStream(socket, authority, server, this.#opened, options.signal)
      const source = options.sourceAddress ?? '0.0.0.0'
      void serveRequest(server.config, stream, { identity: options.identity, address: { address: source, port: 0, family: source.includes(':') ? 6 : 4 } }, {
        method: 'CONNECT',
        authority,
        // As a server reads them: every value a string.
        headers: Object.fromEntries(Object.entries(headers).map(([name, value]) => [name, String(value)])),
        started: performance.now(),
      })
      return await stream.answer
    } catch (err) {
      if (!socket.destroyed) socket.resetAndDestroy()
      throw err
    }
  }

  protocolFor(via: SocketAddress): TunnelProtocol {
    return this.#servers.has(via.address) || this.#fallback === undefined ? 'local' : (this.#fallback.protocolFor?.(via) ?? 'HBONE')
  }

  /** The fallback's sessions: in-process tunnels have none. */
  stats(): readonly HboneSessionStats[] {
    return this.#fallback?.stats() ?? []
  }

  async close(): Promise<void> {
    this.#closed = true
    for (const stream of this.#opened) stream.resetApp()
    await Promise.all([this.#fallback?.close(), ...[...this.#opened].map((stream) => stream.finished)])
  }
}

/**
 * One in-process `CONNECT`, as the destination's server drives it: the
 * application's socket is the client's side, the upstream the server's.
 * Once answered 200, its client holds {@link tunnel}.
 */
class LocalRequestStream implements RequestStream {
  gone = false
  /** The client's side: settles once the splice ends (or the attempt failed). */
  readonly tunnel: LocalTunnel
  /** Settles once with the client's tunnel, or the reason there is none. */
  readonly answer: Promise<HboneTunnel>
  /** Resolves once everything of this tunnel is closed. */
  readonly finished: Promise<void>
  #answer!: { resolve: (tunnel: HboneTunnel) => void; reject: (err: Error) => void }
  #onGone: (() => void) | undefined
  #upstream: Socket | undefined
  readonly #app: Socket
  readonly #authority: string
  readonly #cleanup: () => void
  /** The destination server's idle and stall timeouts. */
  readonly #timeouts: TunnelTimeouts

  constructor(app: Socket, authority: string, server: LocalServer, opened: Set<LocalRequestStream>, signal: AbortSignal | undefined) {
    this.#app = app
    this.#timeouts = server.config.limits.tunnelTimeouts
    this.#authority = authority
    this.tunnel = new LocalTunnel(this)
    this.answer = new Promise((resolve, reject) => (this.#answer = { resolve, reject }))
    // The client's caller may give up; the server must not see an unhandled rejection meanwhile.
    this.answer.catch(() => {})
    let finish!: () => void
    this.finished = new Promise((resolve) => (finish = resolve))
    server.tunnels.add(this)
    opened.add(this)
    this.tunnel.ended = () => {
      server.tunnels.delete(this)
      opened.delete(this)
      finish()
    }
    const onAbort = (): void => this.fail(abortError(signal!, 'HBONE connect'))
    const onClose = (): void => this.fail(new AmbientError(CoreErrorCode.Aborted, 'the application connection closed before its tunnel was ready'))
    app.on('error', ignore)
    app.once('close', onClose)
    signal?.addEventListener('abort', onAbort, { once: true })
    this.#cleanup = () => {
      app.off('close', onClose)
      signal?.removeEventListener('abort', onAbort)
    }
  }

  onGone(listener: () => void): () => void {
    this.#onGone = listener
    return () => (this.#onGone = undefined)
  }

  respond(status: number): boolean {
    if (this.gone) return false
    this.fail(new AmbientError(HboneErrorCode.Status, `HBONE CONNECT ${this.#authority} was answered with status ${status}`, { details: { status, authority: this.#authority } }))
    return true
  }

  carry(upstream: CarriedConnection, done: (result: TunnelResult) => void): boolean {
    const socket = asSocket(upstream, true)
    if (this.gone) {
      socket.resetAndDestroy()
      return false
    }
    this.#cleanup()
    this.#upstream = socket
    startSocketSplice(
      this.#app,
      socket,
      (result) => {
        done(sideOf(result, 'b'))
        this.tunnel.settle(sideOf(result, 'a'))
      },
      this.#timeouts,
    )
    this.#app.off('error', ignore)
    this.#answer.resolve(this.tunnel)
    return true
  }

  /** The server's reset: the upstream goes first, so the client hears the tunnel was reset (or, before the answer, the attempt ends). */
  reset(): void {
    this.#resetFrom(this.#upstream)
  }

  /** The client's reset: the application's socket goes first. */
  resetApp(): void {
    this.#resetFrom(this.#app)
  }

  #resetFrom(side: Socket | undefined): void {
    if (this.#upstream === undefined) {
      this.fail(new AmbientError(HboneErrorCode.Stream, `HBONE CONNECT ${this.#authority} was reset before a response`, { details: { authority: this.#authority } }))
      return
    }
    // The splice resets the other side and reports.
    if (side !== undefined && !side.destroyed) side.resetAndDestroy()
  }

  /** Ends the attempt before the answer: the server hears the stream went away, the client's open rejects, the application is reset. */
  fail(err: Error): void {
    if (this.gone || this.#upstream !== undefined) return
    this.gone = true
    this.#cleanup()
    this.#onGone?.()
    this.#answer.reject(err)
    if (!this.#app.destroyed) this.#app.resetAndDestroy()
    this.tunnel.settle({ outcome: 'stream-reset', socketBytesRead: 0, socketBytesWritten: 0 })
  }
}

/** The client's side of an in-process tunnel. */
class LocalTunnel extends SettlingTunnel {
  readonly protocol = 'local'
  /** Called once the tunnel has ended, before its holder hears of it. */
  ended: () => void = () => {}

  constructor(readonly stream: LocalRequestStream) {
    super()
  }

  reset(): void {
    this.stream.resetApp()
  }

  override settle(result: TunnelResult): void {
    if (this.closed) return
    this.ended()
    super.settle(result)
  }
}

/** One side's view of an in-process splice of the application (`a`) and the upstream (`b`). */
function sideOf(result: SocketSpliceResult, side: 'a' | 'b'): TunnelResult {
  const ownReset = result.resetFirst === side
  return {
    outcome: result.outcome === 'closed' ? 'closed' : ownReset ? 'socket-reset' : 'stream-reset',
    socketBytesRead: side === 'a' ? result.aToB : result.bToA,
    socketBytesWritten: side === 'a' ? result.bToA : result.aToB,
    ...(result.error === undefined ? {} : { error: result.error }),
  }
}

function ignore(): void {}
