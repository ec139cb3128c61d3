import {
  abortError,
  AmbientError,
  canonicalIp,
  CoreErrorCode,
  invalidArgument,
  ipFamily,
  isPort,
  throwIfAborted,
  type AbortOptions,
  type AcceptedSocket,
  type BindUdpFdOptions,
  type ConnectFdOptions,
  type ListenFdOptions,
  type NetnsSockets,
  type SocketAcceptor,
  type SocketAddress,
  type LongLived,
} from '@ambientkit/core'
import { createSocket as createDgramSocket, type Socket as DgramSocket, type SocketOptions as DgramSocketOptions } from 'node:dgram'
import { closeSync, fstatSync, openSync, statSync } from 'node:fs'
import { createServer, Socket, type Server, type ServerOpts } from 'node:net'
import { constants as osConstants } from 'node:os'
import { errnoName, nativeError, RedirectErrorCode } from './errors'
import { originalDestination } from './sockets'
import { native, type NativeSocketSpec, type NftRunResult, type SpawnedProgram } from './native'
import { installHint } from './programs'

/** Options of {@link Netns.listen}. */

export interface NetnsListenOptions extends AbortOptions {
  /** Address to bind. Default `'0.0.0.0'`; an IPv6 address makes an IPv6 socket. */
  host?: string
  /** Port to bind; 0 picks a free one (read it from `server.address()`). Required. */
  port: number
  /** `SO_MARK` for the socket (accepted connections inherit it). Default: none. */
  mark?: number
  /** `IP_TRANSPARENT` / `IPV6_TRANSPARENT`: accept connections to non-local addresses. Default `false`. */
  transparent?: boolean
  /** `IP_FREEBIND` / `IPV6_FREEBIND`: bind an address not (yet) on an interface. Default `false`. */
  freebind?: boolean
  /** `SO_REUSEPORT`. Default `false`. */
  reusePort?: boolean
  /** For an IPv6 host: `true` refuses IPv4 peers, `false` accepts them too (mapped). Default: the kernel's default (dual-stack). */
  ipv6Only?: boolean
  /** `listen()` backlog. Default 511, like Node. */
  backlog?: number
  /** Options for the `net.Server` (e.g. `allowHalfOpen`, `pauseOnConnect`). Default `{}`. */
  server?: ServerOpts
}

/** Options of {@link Netns.listenFd}: those of {@link Netns.listen} but the `net.Server`'s and the signal (it is synchronous). */
export type NetnsListenFdOptions = ListenFdOptions

/** Options of {@link Netns.bindUdp}. */
export interface NetnsUdpOptions extends AbortOptions {
  /** Address to bind. Default `'0.0.0.0'`; an IPv6 address makes an IPv6 socket. */
  host?: string
  /** Port to bind. Default 0: an ephemeral port (read it from `socket.address()`). */
  port?: number
  /** `SO_MARK` for every datagram the socket sends. Default: none. */
  mark?: number
  /** `IP_TRANSPARENT` / `IPV6_TRANSPARENT`: bind a non-local address, receive datagrams to one. Default `false`. */
  transparent?: boolean
  /** `IP_FREEBIND` / `IPV6_FREEBIND`: bind an address not (yet) on an interface. Default `false`. */
  freebind?: boolean
  /** `SO_REUSEPORT`: several sockets share the port, each datagram goes to one of them. Default `false`. */
  reusePort?: boolean
  /** For an IPv6 host: `true` refuses IPv4 peers, `false` takes them too (mapped). Default: the kernel's default (dual-stack). */
  ipv6Only?: boolean
  /** Buffer sizes of the `dgram.Socket` (`SO_RCVBUF`, `SO_SNDBUF`). Default: the kernel's. */
  socket?: Pick<DgramSocketOptions, 'recvBufferSize' | 'sendBufferSize'>
}

/** Options of {@link Netns.bindUdpFd}: those of {@link Netns.bindUdp} but the `dgram.Socket`'s and the signal (it is synchronous). */
export type NetnsUdpFdOptions = BindUdpFdOptions

/** Options of {@link Netns.connectFd}. */
export type NetnsConnectFdOptions = ConnectFdOptions

/** Options of {@link Netns.connect}. */
export interface NetnsConnectOptions extends NetnsConnectFdOptions {
  /** `allowHalfOpen` of the returned `net.Socket`. Default `false`. */
  allowHalfOpen?: boolean
}

/** Options of {@link Netns.exec}. */
export interface NetnsExecOptions extends AbortOptions {
  /** Written to the program's standard input, which is then closed. Default: empty input. */
  input?: string | Buffer
  /** Environment of the program. Default `process.env`. */
  env?: NodeJS.ProcessEnv
  /** Largest stdout or stderr kept, in bytes; past it the program is killed and the call fails. Default 16 MiB. */
  maxOutput?: number
}

/** What a program run by {@link Netns.exec} printed. */
export interface NetnsExecResult {
  stdout: string
  stderr: string
}

/**
 * An open handle on a network namespace; `await using` closes it. It is
 * the `NetnsSockets` of `@ambientkit/core` that a workload proxy takes:
 * listen, accept and connect inside the namespace, original destinations of
 * what was accepted.
 */
export interface Netns extends NetnsSockets, LongLived {
  /** The path that was opened (`/run/netns/<name>`, `/proc/<pid>/ns/net`, or the given path). */
  readonly path: string
  /** `"<device>:<inode>"` of the namespace: equal ids are the same namespace, whatever path opened it. */
  readonly id: string
  /**
   * A listening TCP server whose socket lives in this namespace (created,
   * bound and listening there). Rejects with `ERR_AMBIENT_REDIRECT_SOCKET`
   * (errno in `details`) when the kernel refuses.
   */
  listen(options: NetnsListenOptions): Promise<Server>
  /**
   * {@link listen} without the `net.Server`: the listening descriptor
   * (non-blocking, close-on-exec), which the caller owns, accepts on and
   * closes. For consumers that accept natively (a native data path). Same
   * options (except `server`) and failures as {@link listen}.
   */
  listenFd(options: NetnsListenFdOptions): number
  /**
   * A UDP socket that lives in this namespace (created and bound there),
   * as a `dgram.Socket` that is already bound: it emits no `'listening'`.
   * With a `mark` every datagram it sends carries it, so capture rules let
   * it pass. Rejects with `ERR_AMBIENT_REDIRECT_SOCKET` (errno in
   * `details`) when the kernel refuses.
   */
  bindUdp(options?: NetnsUdpOptions): Promise<DgramSocket>
  /**
   * {@link bindUdp} without the `dgram.Socket`: the bound descriptor
   * (non-blocking, close-on-exec), which the caller owns and closes. Same
   * options (except `socket`) and failures as {@link bindUdp}.
   */
  bindUdpFd(options?: NetnsUdpFdOptions): number
  /**
   * A TCP connection created in this namespace, options applied before
   * `connect()`, resolved once connected. Rejects with
   * `ERR_AMBIENT_REDIRECT_CONNECT` (errno in `details`) or
   * `ERR_AMBIENT_ABORTED`; no descriptor is left open on failure. The
   * socket is already connected when the promise resolves: it emits no
   * `'connect'` event.
   */
  connect(options: NetnsConnectOptions): Promise<Socket>
  /**
   * {@link connect} without the `net.Socket`: resolves with the connected
   * descriptor (non-blocking, close-on-exec), which the caller owns and
   * must close. For consumers that are not Node streams (a native data
   * path): nothing in Node reads from it, so no byte the peer sends first
   * is taken before the consumer gets it. Same options (except
   * `allowHalfOpen`) and failures as {@link connect}; no descriptor is left
   * open on failure or abort.
   */
  connectFd(options: NetnsConnectFdOptions): Promise<number>
  /**
   * Accepts on a listening descriptor from {@link Netns.listenFd | listenFd} (which becomes
   * the acceptor's): each connection is handed to `onSocket` as a
   * descriptor (non-blocking, close-on-exec, TCP_NODELAY) with its peer,
   * so that no `net.Socket` is built for one a native data path carries,
   * and one that JavaScript carries is wrapped with `new net.Socket({ fd })`.
   * When the process runs out of descriptors or memory, accepting pauses
   * for 100 ms rather than spinning, and `onPause` hears it (the errno
   * name). Accepting works from any namespace: only the socket's matters.
   */
  accept(listenFd: number, onSocket: (socket: AcceptedSocket) => void, onPause?: (errno: string) => void): SocketAcceptor
  /**
   * Where an accepted connection was going before capture redirected it;
   * see {@link originalDestination}. Throws
   * `ERR_AMBIENT_REDIRECT_ORIGINAL_DESTINATION` when it was not redirected.
   */
  originalDestination(fd: number, family: 4 | 6): SocketAddress
  /**
   * Calls `fn` with the calling thread inside this namespace and always
   * switches back, even when `fn` throws. Only what `fn` does synchronously
   * happens inside: sockets it creates stay in this namespace for life.
   */
  runSync<T>(fn: () => T): T
  /**
   * Runs a program inside this namespace and resolves with its output when
   * it exits with 0. It is started from inside with posix_spawn: no
   * `nsenter`, and no fork of this whole process, which costs Node's
   * child_process ≈1 ms on the JS thread. It gets its stdio and the
   * environment (default `process.env`, whose PATH finds it), nothing else
   * of ours. Rejects with `ERR_AMBIENT_REDIRECT_PROGRAM_MISSING` (naming the Debian package)
   * or `ERR_AMBIENT_REDIRECT_COMMAND_FAILED` (exit code and stderr in `details`).
   */
  exec(command: string, args?: readonly string[], options?: NetnsExecOptions): Promise<NetnsExecResult>
  /**
   * Runs an nft script (what `nft -f` reads: rules, `list ...` commands)
   * inside this namespace and resolves with what nft printed. It runs
   * in-process with libnftables (Debian package libnftables1, which nftables
   * depends on) on a worker thread, which saves the program's start and the
   * wait for the kernel when it exits; without the library, or with
   * `AMBIENTKIT_NFT=program` in the environment, it runs the `nft` program.
   * Rejects with `ERR_AMBIENT_REDIRECT_COMMAND_FAILED` carrying nft's error
   * message, or `ERR_AMBIENT_REDIRECT_PROGRAM_MISSING`. The signal is
   * checked before the script starts; a started script runs to its end.
   */
  nft(script: string, options?: AbortOptions): Promise<string>
  /** Releases the handle (the namespace itself lives on). Idempotent. */
  close(): Promise<void>
}

const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,255}$/

function resolvePath(target: string | number): string {
  if (typeof target === 'number') {
    if (!Number.isInteger(target) || target <= 0) throw invalidArgument('openNetns(target)', target, 'a pid (integer > 0), a path or a name')
    return `/proc/${target}/ns/net`
  }
  if (typeof target !== 'string' || target.length === 0) {
    throw invalidArgument('openNetns(target)', target, 'a pid (integer > 0), a path or a name')
  }
  if (target.includes('/')) return target
  if (!NAME_PATTERN.test(target) || target === '.' || target === '..') {
    throw invalidArgument('openNetns(target)', target, 'a namespace name as "ip netns" makes (letters, digits, "_", ".", "-")')
  }
  return `/run/netns/${target}`
}

/**
 * Opens a network namespace by path (contains a `/`), by process id (a
 * number: that process's namespace) or by name (as `ip netns add` makes, in
 * `/run/netns`). The handle keeps the namespace referenced until `close()`.
 *
 * @throws `ERR_AMBIENT_REDIRECT_NETNS` when it does not exist or is not a
 * network namespace this process may enter (needs CAP_SYS_ADMIN).
 */
export function openNetns(target: string | number): Netns {
  const path = resolvePath(target)
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch (err) {
    throw new AmbientError(RedirectErrorCode.Netns, `cannot open network namespace ${path}: ${(err as Error).message}`, {
      cause: err,
      details: { path, errnoName: (err as NodeJS.ErrnoException).code },
    })
  }
  try {
    // Entering once proves it is a network namespace we may enter, so later
    // calls fail only for reasons of their own.
    native().runInNetns(fd, () => undefined)
    const stat = fstatSync(fd, { bigint: true })
    return new NetnsHandle(path, fd, `${stat.dev}:${stat.ino}`)
  } catch (err) {
    closeSync(fd)
    throw nativeError(RedirectErrorCode.Netns, `cannot enter network namespace ${path}`, err, { path })
  }
}

/**
 * The sockets of this process's own network namespace, as a
 * `NetnsSockets` (`@ambientkit/core`): listen, accept and connect on descriptors without
 * entering any namespace, so without root. For a data plane that serves
 * the host's namespace (a gateway, a test), and for tests of one.
 *
 * @example
 * ```ts
 * import { createServer } from 'node:net'
 * import { ownNetnsSockets } from '@ambientkit/redirect'
 *
 * const sockets = ownNetnsSockets()
 * const listening = sockets.listenFd({ host: '127.0.0.1', port: 0 })
 * const acceptor = sockets.accept(listening, ({ fd, remote }) => console.log('accepted', fd, remote))
 * ```
 */
export function ownNetnsSockets(): NetnsSockets {
  return OWN_SOCKETS
}

const OWN_PATH = '/proc/self/ns/net'

const OWN_SOCKETS: NetnsSockets = Object.freeze({
  get id(): string {
    const stat = statSync(OWN_PATH, { bigint: true })
    return `${stat.dev}:${stat.ino}`
  },
  path: OWN_PATH,
  listenFd: (options: ListenFdOptions) => listenFdIn(-1, 'this namespace', options),
  accept: (listenFd: number, onSocket: (socket: AcceptedSocket) => void, onPause?: (errno: string) => void) => acceptOn(listenFd, 'this namespace', onSocket, onPause),
  connectFd: (options: ConnectFdOptions) => connectFdIn(-1, 'this namespace', options),
  bindUdpFd: (options: BindUdpFdOptions = {}) => bindUdpFdIn(-1, 'this namespace', options),
  originalDestination: (fd: number, family: 4 | 6) => originalDestination(fd, family),
})

function checkMark(name: string, value: unknown): void {
  if (value === undefined) return
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw invalidArgument(name, value, 'an integer 0-0xffffffff')
  }
}

function checkBoolean(name: string, value: unknown): void {
  if (value !== undefined && typeof value !== 'boolean') throw invalidArgument(name, value, 'a boolean')
}

function checkPort(name: string, value: unknown, allowZero: boolean): void {
  if (allowZero && value === 0) return
  if (!isPort(value)) throw invalidArgument(name, value, allowZero ? 'an integer 0-65535' : 'an integer 1-65535')
}

/** The validated spec of a socket bound to `options.host` (default `0.0.0.0`) and `options.port` (0: any). */
function boundSocketSpec(what: string, options: NetnsListenFdOptions): NativeSocketSpec & { bindAddress: string; bindPort: number } {
  const host = canonicalIp(options.host ?? '0.0.0.0', `${what} host`)
  checkPort(`${what} port`, options.port, true)
  checkMark(`${what} mark`, options.mark)
  for (const key of ['transparent', 'freebind', 'reusePort', 'ipv6Only'] as const) checkBoolean(`${what} ${key}`, options[key])
  const family = ipFamily(host)
  return {
    family,
    mark: options.mark,
    transparent: options.transparent,
    freebind: options.freebind,
    reusePort: options.reusePort,
    v6Only: options.ipv6Only === undefined || family === 4 ? undefined : options.ipv6Only ? 1 : 0,
    bindAddress: host,
    bindPort: options.port,
  }
}

class NetnsHandle implements Netns {
  #fd: number | undefined

  constructor(
    readonly path: string,
    fd: number,
    readonly id: string,
  ) {
    this.#fd = fd
  }

  #open(what: string): number {
    if (this.#fd === undefined) {
      throw new AmbientError(CoreErrorCode.Closed, `${what}: the handle on ${this.path} is closed`, { details: { path: this.path } })
    }
    return this.#fd
  }

  runSync<T>(fn: () => T): T {
    if (typeof fn !== 'function') throw invalidArgument('runSync(fn)', fn, 'a function')
    const fd = this.#open('runSync')
    return native().runInNetns(fd, fn)
  }

  async listen(options: NetnsListenOptions): Promise<Server> {
    throwIfAborted(options.signal, 'listen')
    const fd = this.listenFd(options)
    const host = canonicalIp(options.host ?? '0.0.0.0', 'listen host')
    const backlog = options.backlog ?? 511
    const server = createServer(options.server ?? {})
    return new Promise<Server>((resolve, reject) => {
      const signal = options.signal
      const done = (err?: Error): void => {
        server.off('listening', onListening)
        server.off('error', onError)
        signal?.removeEventListener('abort', onAbort)
        if (err === undefined) {
          resolve(server)
        } else {
          server.close()
          reject(err)
        }
      }
      const onListening = (): void => done()
      const onError = (err: Error): void =>
        done(nativeError(RedirectErrorCode.Socket, `cannot listen on ${host} port ${options.port} in ${this.path}`, err, { path: this.path, host, port: options.port }))
      const onAbort = (): void => done(abortError(signal!, 'listen'))
      server.once('listening', onListening)
      server.once('error', onError)
      signal?.addEventListener('abort', onAbort, { once: true })
      // Node adopts the descriptor from here on and closes it with the server.
      server.listen({ fd, backlog })
    })
  }

  listenFd(options: NetnsListenFdOptions): number {
    return listenFdIn(this.#open('listen'), this.path, options)
  }

  accept(listenFd: number, onSocket: (socket: AcceptedSocket) => void, onPause?: (errno: string) => void): SocketAcceptor {
    return acceptOn(listenFd, this.path, onSocket, onPause)
  }

  originalDestination(fd: number, family: 4 | 6): SocketAddress {
    return originalDestination(fd, family)
  }

  async bindUdp(options: NetnsUdpOptions = {}): Promise<DgramSocket> {
    throwIfAborted(options.signal, 'bindUdp')
    const fd = this.bindUdpFd(options)
    const host = canonicalIp(options.host ?? '0.0.0.0', 'bindUdp host')
    const socket = createDgramSocket({ type: ipFamily(host) === 4 ? 'udp4' : 'udp6', ...options.socket })
    return new Promise<DgramSocket>((resolve, reject) => {
      const onError = (err: Error): void => {
        socket.off('listening', onListening)
        socket.close()
        reject(nativeError(RedirectErrorCode.Socket, `cannot use the UDP socket on ${host} port ${options.port ?? 0} in ${this.path}`, err, { path: this.path, host, port: options.port ?? 0 }))
      }
      const onListening = (): void => {
        socket.off('error', onError)
        resolve(socket)
      }
      socket.once('error', onError)
      socket.once('listening', onListening)
      // Node adopts the descriptor from here on and closes it with the socket.
      socket.bind({ fd })
    })
  }

  bindUdpFd(options: NetnsUdpFdOptions = {}): number {
    return bindUdpFdIn(this.#open('bindUdp'), this.path, options)
  }


  async connect(options: NetnsConnectOptions): Promise<Socket> {
    checkBoolean('connect allowHalfOpen', options.allowHalfOpen)
    const fd = await this.connectFd(options)
    return new Socket({ fd, allowHalfOpen: options.allowHalfOpen ?? false, readable: true, writable: true })
  }

  connectFd(options: NetnsConnectFdOptions): Promise<number> {
    return connectFdIn(this.#open('connect'), this.path, options)
  }

  async exec(command: string, args: readonly string[] = [], options: NetnsExecOptions = {}): Promise<NetnsExecResult> {
    if (typeof command !== 'string' || command.length === 0) throw invalidArgument('exec command', command, 'a program name or path')
    if (!Array.isArray(args) || args.some((arg) => typeof arg !== 'string')) throw invalidArgument('exec args', args, 'an array of strings')
    const nsFd = this.#open('exec')
    const signal = options.signal
    throwIfAborted(signal, `exec ${command}`)
    const maxOutput = options.maxOutput ?? 16 * 1024 * 1024
    const child = spawnProgram(nsFd, command, args, options.env ?? process.env)
    return collect(child, command, args, options.input, maxOutput, signal, this.path)
  }

  async nft(script: string, options: AbortOptions = {}): Promise<string> {
    if (typeof script !== 'string') throw invalidArgument('nft script', script, 'an nft script (a string)')
    const nsFd = this.#open('nft')
    throwIfAborted(options.signal, 'nft')
    const addon = native()
    if (process.env.AMBIENTKIT_NFT === 'program' || addon.nftAvailable() !== null) {
      return (await this.exec('nft', ['-f', '-'], { input: script, signal: options.signal })).stdout
    }
    const result = await new Promise<NftRunResult>((resolve, reject) => {
      addon.nftRun(nsFd, script, (err, answer) => {
        if (err !== null) reject(nativeError(RedirectErrorCode.CommandFailed, `cannot run nft in ${this.path}`, err, { path: this.path }))
        else resolve(answer!)
      })
    })
    if (result.status !== 0) {
      throw new AmbientError(RedirectErrorCode.CommandFailed, `nft failed in ${this.path}: ${result.error.trim() || result.output.trim()}`, {
        details: { command: 'nft', path: this.path, status: result.status, stderr: result.error, stdout: result.output },
      })
    }
    return result.output
  }

  async close(): Promise<void> {
    if (this.#fd === undefined) return
    const fd = this.#fd
    this.#fd = undefined
    closeSync(fd)
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}

/** A program started by the addon: its stdio, and how it ended once it has. */
interface Program {
  pid: number
  stdin: Socket
  stdout: Socket
  stderr: Socket
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/** A listening socket inside the namespace `nsFd` (-1: this process's own). */
function listenFdIn(nsFd: number, where: string, options: ListenFdOptions): number {
  const backlog = options.backlog ?? 511
  if (!Number.isInteger(backlog) || backlog < 1) throw invalidArgument('listen backlog', options.backlog, 'an integer >= 1')
  const spec = boundSocketSpec('listen', options)
  try {
    return native().listenTcp(nsFd, { ...spec, backlog })
  } catch (err) {
    throw nativeError(RedirectErrorCode.Socket, `cannot listen on ${spec.bindAddress} port ${spec.bindPort} in ${where}`, err, {
      path: where,
      host: spec.bindAddress,
      port: spec.bindPort,
    })
  }
}

/** A UDP socket bound inside the namespace `nsFd` (-1: this process's own). */
function bindUdpFdIn(nsFd: number, where: string, options: BindUdpFdOptions): number {
  const spec = boundSocketSpec('bindUdp', { ...options, port: options.port ?? 0 })
  try {
    return native().bindUdp(nsFd, spec)
  } catch (err) {
    throw nativeError(RedirectErrorCode.Socket, `cannot bind UDP ${spec.bindAddress} port ${spec.bindPort} in ${where}`, err, {
      path: where,
      host: spec.bindAddress,
      port: spec.bindPort,
    })
  }
}

/** Accepts on a listening descriptor (of any namespace) with the addon. */
function acceptOn(listenFd: number, where: string, onSocket: (socket: AcceptedSocket) => void, onPause?: (errno: string) => void): SocketAcceptor {
  if (!Number.isInteger(listenFd) || listenFd < 0) throw invalidArgument('accept(listenFd)', listenFd, 'a listening descriptor from listenFd()')
  if (typeof onSocket !== 'function') throw invalidArgument('accept(onSocket)', onSocket, 'a function')
  const addon = native()
  let handle: object
  try {
    handle = addon.acceptTcp(listenFd, (fd, address, port, family) => {
      if (fd >= 0) onSocket({ fd, remote: { address: canonicalIp(address!), port: port!, family: family! } })
      else onPause?.(errnoName(-fd) ?? `errno ${-fd}`)
    })
  } catch (err) {
    throw nativeError(RedirectErrorCode.Socket, `cannot accept on descriptor ${listenFd} in ${where}`, err, { path: where })
  }
  return { close: () => addon.stopAccepting(handle) }
}

/** A connected socket made inside the namespace `nsFd` (-1: this process's own). */
async function connectFdIn(nsFd: number, where: string, options: ConnectFdOptions): Promise<number> {
  const host = canonicalIp(options.host, 'connect host')
  checkPort('connect port', options.port, false)
  checkMark('connect mark', options.mark)
  for (const key of ['transparent', 'freebind', 'reusePort'] as const) checkBoolean(`connect ${key}`, options[key])
  const family = ipFamily(host)
  let localAddress: string | undefined
  if (options.localAddress !== undefined) {
    localAddress = canonicalIp(options.localAddress, 'connect localAddress')
    if (ipFamily(localAddress) !== family) {
      throw invalidArgument('connect localAddress', options.localAddress, `an IPv${family} address like host ${host}`)
    }
  }
  if (options.localPort !== undefined) checkPort('connect localPort', options.localPort, true)
  const signal = options.signal
  throwIfAborted(signal, 'connect')
  const spec: NativeSocketSpec = {
    family,
    mark: options.mark,
    transparent: options.transparent,
    freebind: options.freebind,
    reusePort: options.reusePort,
    bindAddress: localAddress,
    bindPort: options.localPort ?? 0,
    connectAddress: host,
    connectPort: options.port,
  }
  const addon = native()
  const details = { path: where, host, port: options.port }
  let fd: number
  try {
    fd = addon.connectTcp(nsFd, spec)
  } catch (err) {
    throw nativeError(RedirectErrorCode.Connect, `cannot connect to ${host} port ${options.port} from ${where}`, err, details)
  }
  await new Promise<void>((resolve, reject) => {
    let wait: object
    const onAbort = (): void => {
      addon.cancelWait(wait)
      addon.closeFd(fd)
      reject(abortError(signal!, 'connect'))
    }
    try {
      wait = addon.waitConnected(fd, (errno) => {
        signal?.removeEventListener('abort', onAbort)
        if (errno === 0) {
          resolve()
          return
        }
        addon.closeFd(fd)
        reject(
          nativeError(
            RedirectErrorCode.Connect,
            `cannot connect to ${host} port ${options.port} from ${where}`,
            Object.assign(new Error(`connect: errno ${errno}`), { errno, syscall: 'connect' }),
            details,
          ),
        )
      })
    } catch (err) {
      addon.closeFd(fd)
      reject(nativeError(RedirectErrorCode.Connect, `cannot wait for the connection to ${host} port ${options.port}`, err, details))
      return
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
  return fd
}

const SIGNAL_NAMES = new Map(Object.entries(osConstants.signals).map(([name, number]) => [number, name as NodeJS.Signals]))

/**
 * Starts `command` inside the namespace (the addon's posix_spawn: unlike
 * child_process, no fork of the whole process on this thread). Looks it up
 * in the PATH of `env`, as child_process does.
 */
function spawnProgram(nsFd: number, command: string, args: readonly string[], env: NodeJS.ProcessEnv): Program {
  const envp = Object.entries(env).flatMap(([name, value]) => (value === undefined ? [] : [`${name}=${value}`]))
  let started: SpawnedProgram
  try {
    started = native().spawnInNetns(nsFd, command, [command, ...args], envp, env.PATH ?? null)
  } catch (err) {
    if ((err as { errno?: number }).errno === osConstants.errno.ENOENT) {
      throw new AmbientError(RedirectErrorCode.ProgramMissing, `cannot run ${command}: not found; ${installHint(command)}`, { cause: err, details: { command } })
    }
    throw new AmbientError(RedirectErrorCode.CommandFailed, `cannot run ${command}: ${(err as Error).message}`, { cause: err, details: { command, args } })
  }
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    native().waitExit(started.pidfd, started.pid, (code, signal) => resolve({ code, signal: signal === null ? null : (SIGNAL_NAMES.get(signal) ?? null) })),
  )
  return {
    pid: started.pid,
    stdin: new Socket({ fd: started.stdin, readable: false, writable: true }),
    stdout: new Socket({ fd: started.stdout, readable: true, writable: false }),
    stderr: new Socket({ fd: started.stderr, readable: true, writable: false }),
    exited,
  }
}

/** Feeds `input`, gathers the output, and settles once the program has exited and its output is read to the end. */
function collect(
  child: Program,
  command: string,
  args: readonly string[],
  input: string | Buffer | undefined,
  maxOutput: number,
  signal: AbortSignal | undefined,
  path: string,
): Promise<NetnsExecResult> {
  const stdout: Buffer[] = []
  const stderr: Buffer[] = []
  let outBytes = 0
  let errBytes = 0
  let failure: Error | undefined
  let running = true
  const fail = (err: Error): void => {
    failure ??= err
    // Not reaped before `exited` settles, so the pid is still this program's.
    if (running) process.kill(child.pid, 'SIGKILL')
  }
  const onAbort = (): void => fail(abortError(signal!, `exec ${command}`))
  signal?.addEventListener('abort', onAbort, { once: true })
  child.stdout.on('data', (chunk: Buffer) => {
    outBytes += chunk.length
    if (outBytes > maxOutput) fail(new AmbientError(RedirectErrorCode.CommandFailed, `${command}: output exceeded ${maxOutput} bytes`))
    else stdout.push(chunk)
  })
  child.stderr.on('data', (chunk: Buffer) => {
    errBytes += chunk.length
    if (errBytes <= maxOutput) stderr.push(chunk)
  })
  // A program that exits without reading its input makes the write fail
  // with EPIPE; its exit status tells what happened.
  child.stdin.on('error', () => undefined)
  child.stdin.end(input ?? '')
  const closed = (socket: Socket): Promise<void> =>
    new Promise((resolve) => {
      socket.on('error', () => undefined)
      socket.on('close', () => resolve())
    })
  const ended = child.exited.then((how) => {
    running = false
    child.stdin.destroy()
    return how
  })
  // Every descriptor is closed by the time this settles.
  return Promise.all([ended, closed(child.stdin), closed(child.stdout), closed(child.stderr)]).then(([{ code, signal: exitSignal }]) => {
    signal?.removeEventListener('abort', onAbort)
    if (failure !== undefined) throw failure
    const out = Buffer.concat(stdout).toString('utf8')
    const err = Buffer.concat(stderr).toString('utf8')
    if (code === 0) return { stdout: out, stderr: err }
    const how = code === null ? `was killed by ${exitSignal}` : `exited with ${code}`
    throw new AmbientError(RedirectErrorCode.CommandFailed, `${command} ${how} in ${path}: ${err.trim() || out.trim()}`, {
      details: { command, args, exitCode: code, signal: exitSignal, stderr: err, stdout: out, path },
    })
  })
}
