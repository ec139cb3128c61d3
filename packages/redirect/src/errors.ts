import { AmbientError, type AmbientErrorDetails, type AmbientErrorDetailsMap, type InvalidValueDetails } from '@ambientkit/core'
import { getSystemErrorName } from 'node:util'

/** Error codes owned by `@ambientkit/redirect` (see docs/errors.md). */
export const RedirectErrorCode = {
  /** A capture configuration was refused; `details.name` is the option, `details.value` its value. Nothing was changed. */
  InvalidConfig: 'ERR_AMBIENT_REDIRECT_INVALID_CONFIG',
  /** Reading or changing ip rules and routes through rtnetlink failed. */
  Netlink: 'ERR_AMBIENT_REDIRECT_NETLINK',
  /** The native addon could not be loaded (not built, or built for another platform). */
  NativeUnavailable: 'ERR_AMBIENT_REDIRECT_NATIVE_UNAVAILABLE',
  /** A network namespace could not be opened or entered; `details.errno` says why. */
  Netns: 'ERR_AMBIENT_REDIRECT_NETNS',
  /** Creating, configuring, binding or listening on a socket inside a namespace failed; `details.errno`, `details.syscall`. */
  Socket: 'ERR_AMBIENT_REDIRECT_SOCKET',
  /** A connection made from inside a namespace failed; `details.errno` (e.g. ECONNREFUSED). */
  Connect: 'ERR_AMBIENT_REDIRECT_CONNECT',
  /** The original destination of a connection could not be read (not redirected, or the socket is closed). */
  OriginalDestination: 'ERR_AMBIENT_REDIRECT_ORIGINAL_DESTINATION',
  /** Reading or setting a socket option (SO_MARK) failed. */
  SocketOption: 'ERR_AMBIENT_REDIRECT_SOCKET_OPTION',
  /** A program run inside a namespace exited with a failure; `details` has the exit code and stderr. */
  CommandFailed: 'ERR_AMBIENT_REDIRECT_COMMAND_FAILED',
  /** A program the operation needs is not installed; the message names the Debian package providing it. */
  ProgramMissing: 'ERR_AMBIENT_REDIRECT_PROGRAM_MISSING',
  /** IPv6 capture was asked for in a namespace whose IPv6 is disabled (`details.sysctl`); nothing was changed. Capture it with `{ ipv6: false }`. */
  Ipv6Disabled: 'ERR_AMBIENT_REDIRECT_IPV6_DISABLED',
} as const satisfies Record<string, keyof AmbientErrorDetailsMap>

/** What the kernel said, on an error from a system call. */
export interface SystemCallDetails {
  /** The errno, a positive number. */
  readonly errno?: number
  /** Its symbolic name (`ECONNREFUSED`). */
  readonly errnoName?: string
  /** The system call that failed. */
  readonly syscall?: string
}

/** Where a socket was, on an error about one. */
export interface SocketDetails extends SystemCallDetails {
  /** The namespace, when the socket was made in one. */
  readonly path?: string
  readonly host?: string
  readonly port?: number
  /** The descriptor, when the error is about an existing socket. */
  readonly fd?: number
}

/** What ran, on an error from a program run in a namespace. */
export interface CommandDetails extends SystemCallDetails {
  readonly command?: string
  readonly args?: readonly string[]
  /** The namespace it ran in. */
  readonly path?: string
  /** Its exit code, or libnftables' status. */
  readonly exitCode?: number | null
  readonly status?: number
  /** The signal that ended it. */
  readonly signal?: string | null
  readonly stdout?: string
  readonly stderr?: string
}

declare module '@ambientkit/core' {
  /** The `details` of `@ambientkit/redirect`'s codes. */
  interface AmbientErrorDetailsMap {
    ERR_AMBIENT_REDIRECT_INVALID_CONFIG: InvalidValueDetails
    ERR_AMBIENT_REDIRECT_NETLINK: { readonly path: string }
    ERR_AMBIENT_REDIRECT_NATIVE_UNAVAILABLE: {
      /** The addon the loader found, when one failed to load. */
      readonly path?: string
      /** Every build the loader tried, in order. */
      readonly tried?: readonly string[]
    }
    ERR_AMBIENT_REDIRECT_NETNS: SystemCallDetails & { readonly path: string }
    ERR_AMBIENT_REDIRECT_SOCKET: SocketDetails
    ERR_AMBIENT_REDIRECT_CONNECT: SocketDetails
    ERR_AMBIENT_REDIRECT_ORIGINAL_DESTINATION: SocketDetails & { readonly family?: 4 | 6 }
    ERR_AMBIENT_REDIRECT_SOCKET_OPTION: SocketDetails & {
      /** The value being set. */
      readonly mark?: number
      /** What was asked of a socket that has no descriptor. */
      readonly name?: string
    }
    ERR_AMBIENT_REDIRECT_COMMAND_FAILED: CommandDetails
    ERR_AMBIENT_REDIRECT_PROGRAM_MISSING: { readonly command: string }
    ERR_AMBIENT_REDIRECT_IPV6_DISABLED: {
      readonly path: string
      readonly sysctl: string
      readonly value: string
    }
  }
}

type RedirectErrorCode = (typeof RedirectErrorCode)[keyof typeof RedirectErrorCode]

/** An errno as its symbolic name (`ECONNREFUSED`), or `undefined` when it is not one. */
export function errnoName(errno: unknown): string | undefined {
  if (typeof errno !== 'number' || !Number.isInteger(errno) || errno <= 0) return undefined
  try {
    return getSystemErrorName(-errno)
  } catch {
    return undefined
  }
}

/**
 * Wraps an error thrown by the native addon (an Error with `errno` and
 * `syscall`) into an {@link AmbientError} with `details.errno`,
 * `details.errnoName` and `details.syscall`.
 */
export function nativeError<C extends RedirectErrorCode>(
  code: C,
  what: string,
  err: unknown,
  details: Omit<AmbientErrorDetails<C>, keyof SystemCallDetails>,
): AmbientError {
  if (err instanceof AmbientError) return err
  const raw = (err as { errno?: unknown } | null)?.errno
  // The addon's errno is positive; Node's own socket errors carry it negated.
  const errno = typeof raw === 'number' ? Math.abs(raw) : undefined
  const syscall = (err as { syscall?: unknown } | null)?.syscall
  const name = errnoName(errno)
  const message = err instanceof Error ? err.message : String(err)
  const named = name === undefined || message.includes(name) ? '' : ` (${name})`
  return new AmbientError(code, `${what}: ${message}${named}`, {
    cause: err,
    details: { ...details, errno, errnoName: name, syscall: typeof syscall === 'string' ? syscall : undefined } as AmbientErrorDetails<C>,
  })
}
