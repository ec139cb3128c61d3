import { AmbientError } from '@ambientkit/core'
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
  waitConnected(fd: number, callback: (errno: number) => void): object
  cancelWait(handle: object): void
  originalDst(fd: number, family: 4 | 6): { address: string; port: number; family: 4 | 6 }
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

// The same relative path works from src/ (tests run the sources) and from
// dist/ (both builds are one level below the package root, like build/).
const ADDON_URL = new URL('../build/Release/ambient_redirect.node', import.meta.url)

let addon: NativeAddon | undefined

/** The loaded addon; throws `ERR_AMBIENT_REDIRECT_NATIVE_UNAVAILABLE` saying how to build it. */
export function native(): NativeAddon {
  if (addon !== undefined) return addon
  const path = fileURLToPath(ADDON_URL)
  try {
    addon = createRequire(import.meta.url)(path) as NativeAddon
  } catch (err) {
    throw new AmbientError(
      RedirectErrorCode.NativeUnavailable,
      `the native addon of @ambientkit/redirect could not be loaded from ${path}: build it with "npm run native -w @ambientkit/redirect" (needs make, a C compiler and python3)`,
      { cause: err, details: { path } },
    )
  }
  return addon
}
