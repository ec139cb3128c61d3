import { AmbientError } from '@ambientkit/core'
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import { RedirectErrorCode } from './errors'

/** Options of a socket the addon creates; see native/redirect.c. */
export interface NativeSocketSpec {
  family: 4 | 6
  mark?: number
  transparent?: boolean
  freebind?: boolean
  reusePort?: boolean
  v6Only?: 0 | 1
  bindAddress?: string
  bindPort?: number
  backlog?: number
  connectAddress?: string
  connectPort?: number
}

/** What the kernel holds for a socket, read back with getsockopt. */
export interface SocketOptions {
  mark: number
  transparent: boolean
  freebind: boolean
  reusePort: boolean
  family: 4 | 6
}

/** The functions of native/redirect.c. */
export interface NativeAddon {
  runInNetns<T>(nsFd: number, fn: () => T): T
  listenTcp(nsFd: number, spec: NativeSocketSpec): number
  connectTcp(nsFd: number, spec: NativeSocketSpec): number
  bindUdp(nsFd: number, spec: NativeSocketSpec): number
  waitConnected(fd: number, callback: (errno: number) => void): object
  cancelWait(handle: object): void
  /**
   * Accepts on a listening socket (which becomes the addon's): each connection as a non-blocking
   * descriptor with TCP_NODELAY and its peer (IPv4 peers of a dual-stack listener as family 4), or
   * `-errno` once when accepting pauses for lack of descriptors or memory.
   */
  acceptTcp(listenFd: number, callback: (fd: number, address?: string, port?: number, family?: 4 | 6) => void): object
  /** Stops accepting and closes the listening socket. Idempotent. */
  stopAccepting(handle: object): void
  /** Calls back once when `fd` is readable (or hung up), with 0 or its pending errno. */
  waitReadable(fd: number, callback: (errno: number) => void): object
  /** A connected, non-blocking, close-on-exec AF_UNIX SOCK_SEQPACKET socket. */
  seqpacketConnect(path: string): number
  /** Sends one message; throws with errno EAGAIN when the peer's queue is full. */
  seqpacketSend(fd: number, data: Buffer): number
  /** One message and the descriptors it carried (close-on-exec, ours to close), or null when none is waiting. */
  seqpacketRecv(fd: number, maxBytes: number): { data: Buffer; fds: number[]; truncated: boolean; controlTruncated: boolean } | null
  originalDst(fd: number, family: 4 | 6): { address: string; port: number; family: 4 | 6 }
  localAddress(fd: number): { address: string; port: number; family: 4 | 6 }
  getMark(fd: number): number
  setMark(fd: number, mark: number): void
  peerCredentials(fd: number): PeerCredentials
  socketOptions(fd: number): SocketOptions
  closeFd(fd: number): void
  /** `null` when libnftables can be used, else why not. */
  nftAvailable(): string | null
  nftRun(nsFd: number, script: string, callback: (err: Error | null, result?: NftRunResult) => void): void
  /** posix_spawn inside the namespace; `path` is the PATH to search when `file` has no slash. The descriptors are ours to close. */
  spawnInNetns(nsFd: number, file: string, argv: readonly string[], envp: readonly string[], path: string | null): SpawnedProgram
  /** Calls back once the program has exited and is reaped: its exit code, or null and a signal number. Closes `pidfd`. */
  waitExit(pidfd: number, pid: number, callback: (code: number | null, signal: number | null) => void): void
}

/** The process at the other end of a unix socket, as the kernel recorded it at connect(2). */
export interface PeerCredentials {
  /** In the caller's pid namespace; 0 when the peer's process is outside it. */
  pid: number
  uid: number
  gid: number
}

/** A program {@link NativeAddon.spawnInNetns} started: our ends of its stdio. */
export interface SpawnedProgram {
  pid: number
  pidfd: number
  stdin: number
  stdout: number
  stderr: number
}

/** What libnftables answered to a script: `status` 0 is success; `output` and `error` are what `nft` would print. */
export interface NftRunResult {
  status: number
  output: string
  error: string
}

// build/ and prebuilds/ are one level above this file in the sources (src/)
// and above the bundle (dist/).
const ROOT = new URL('../', import.meta.url)

/** The C library this process runs on, from what is mapped into it: musl's loader, or glibc. */
function runtimeLibc(): 'glibc' | 'musl' {
  try {
    return /\/(ld-musl-|libc\.musl-)/.test(readFileSync('/proc/self/maps', 'utf8')) ? 'musl' : 'glibc'
  } catch {
    return 'glibc'
  }
}

/**
 * Where the addon is loaded from, in order: a build from source
 * (`build/Release`, what `npm rebuild @ambientkit/redirect` makes), then the
 * prebuilt addon for this platform (`prebuilds/linux-<arch>/node.napi.<glibc|musl>.node`).
 */
function nativeAddonCandidates(): string[] {
  return [
    fileURLToPath(new URL('build/Release/ambient_redirect.node', ROOT)),
    fileURLToPath(new URL(`prebuilds/${process.platform}-${process.arch}/node.napi.${runtimeLibc()}.node`, ROOT)),
  ]
}

let addon: NativeAddon | undefined

/** The loaded addon; throws `ERR_AMBIENT_REDIRECT_NATIVE_UNAVAILABLE` saying why none loads and how to build it. */
export function native(): NativeAddon {
  if (addon !== undefined) return addon
  const reasons: string[] = []
  for (const path of nativeAddonCandidates()) {
    if (!existsSync(path)) continue
    try {
      addon = createRequire(import.meta.url)(path) as NativeAddon
      return addon
    } catch (err) {
      reasons.push(`${path}: ${(err as Error).message.split('\n')[0]}`)
    }
  }
  const why = reasons.length > 0 ? reasons.join('; ') : `no prebuilt addon for ${process.platform}-${process.arch} (${runtimeLibc()}), and none built from source`
  throw new AmbientError(
    RedirectErrorCode.NativeUnavailable,
    `the native addon of @ambientkit/redirect cannot be loaded (${why}): install a C compiler, make and python3 (Debian/Ubuntu: apt-get install build-essential python3), then run npm rebuild @ambientkit/redirect`,
    { details: { tried: nativeAddonCandidates() } },
  )
}
