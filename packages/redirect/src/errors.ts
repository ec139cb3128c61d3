import { AmbientError, type AmbientErrorCode } from '@ambientkit/core'
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
} as const satisfies Record<string, AmbientErrorCode>

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
export function nativeError(code: AmbientErrorCode, what: string, err: unknown, details: Record<string, unknown> = {}): AmbientError {
  if (err instanceof AmbientError) return err
  const errno = (err as { errno?: unknown } | null)?.errno
  const syscall = (err as { syscall?: unknown } | null)?.syscall
  const name = errnoName(errno)
  const message = err instanceof Error ? err.message : String(err)
  return new AmbientError(code, `${what}: ${message}${name === undefined ? '' : ` (${name})`}`, {
    cause: err,
    details: { ...details, errno, errnoName: name, syscall },
  })
}
