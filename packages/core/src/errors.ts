/**
 * Every error ambientkit throws or emits is an {@link AmbientError} with a
 * stable `code`. Match on `err.code`, never on the message: messages are for
 * people and may be reworded, codes are part of the API (see docs/errors.md).
 */
export type AmbientErrorCode = `ERR_AMBIENT_${string}`

/** Options accepted by {@link AmbientError}. */
export interface AmbientErrorOptions {
  /** The underlying error, kept for diagnosis. */
  cause?: unknown
  /** Structured facts about the failure (the offending field and value, an errno...). */
  details?: Record<string, unknown>
}

/** The one error type of ambientkit. */
export class AmbientError extends Error {
  override readonly name = 'AmbientError'
  readonly code: AmbientErrorCode
  readonly details: Readonly<Record<string, unknown>>

  constructor(code: AmbientErrorCode, message: string, options: AmbientErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.details = Object.freeze({ ...options.details })
  }
}

/** True when `err` is an {@link AmbientError}, optionally with the given code. */
export function isAmbientError(err: unknown, code?: AmbientErrorCode): err is AmbientError {
  return err instanceof AmbientError && (code === undefined || err.code === code)
}

/** Error codes owned by `@ambientkit/core`. Other packages export their own. */
export const CoreErrorCode = {
  /** An argument or option had the wrong type or value. */
  InvalidArgument: 'ERR_AMBIENT_INVALID_ARGUMENT',
  /** An IP address or `ip:port` socket address could not be parsed. */
  InvalidAddress: 'ERR_AMBIENT_INVALID_ADDRESS',
  /** A workload or service failed validation. */
  InvalidWorkload: 'ERR_AMBIENT_INVALID_WORKLOAD',
  /** An authorization policy failed validation. */
  InvalidPolicy: 'ERR_AMBIENT_INVALID_POLICY',
  /** The operation was cancelled through its `AbortSignal`. */
  Aborted: 'ERR_AMBIENT_ABORTED',
  /** The object was used after `close()`. */
  Closed: 'ERR_AMBIENT_CLOSED',
} as const satisfies Record<string, AmbientErrorCode>

/**
 * The error to throw when an operation is cancelled: keeps the signal's
 * reason as `cause` so callers can tell a timeout from a user abort.
 */
export function abortError(signal: AbortSignal, what: string): AmbientError {
  return new AmbientError(CoreErrorCode.Aborted, `${what} was aborted`, { cause: signal.reason })
}

/** Throws {@link abortError} if `signal` is already aborted. */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted === true) throw abortError(signal, what)
}

/** Shorthand for an {@link CoreErrorCode.InvalidArgument} error naming the option and its value. */
export function invalidArgument(name: string, value: unknown, expected: string): AmbientError {
  return new AmbientError(
    CoreErrorCode.InvalidArgument,
    `${name}: expected ${expected}, got ${describeValue(value)}`,
    { details: { name, value } },
  )
}

/** A short, printable rendering of a value for error messages. */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 77)}...` : value)
  if (value === null || value === undefined || typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
    return String(value)
  }
  if (Array.isArray(value)) return `an array of ${value.length}`
  return `a ${typeof value}`
}
