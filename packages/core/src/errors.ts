/**
 * Every error ambientkit throws or emits is an {@link AmbientError} with a
 * stable `code`. Match on `err.code`, never on the message: messages are for
 * people and may be reworded, codes are part of the API (see docs/errors.md).
 */
export type AmbientErrorCode = `ERR_AMBIENT_${string}`

/**
 * The `details` of each error code: a map from code to the type of its
 * `details`. Each package adds its own codes by declaration merging
 * (`declare module '@ambientkit/core' { interface AmbientErrorDetailsMap { ... } }`),
 * so that `isAmbientError(err, code)` narrows `err.details` to that code's
 * type. A code that is not in the map has `Record<string, unknown>` details.
 */
export interface AmbientErrorDetailsMap {
  ERR_AMBIENT_INVALID_ARGUMENT: InvalidValueDetails
  ERR_AMBIENT_INVALID_ADDRESS: InvalidValueDetails
  ERR_AMBIENT_INVALID_WORKLOAD: InvalidValueDetails
  ERR_AMBIENT_INVALID_POLICY: InvalidValueDetails & {
    /** The policy's `namespace/name`, when it has got that far. */
    readonly policy?: string
  }
  ERR_AMBIENT_ABORTED: NoDetails
  ERR_AMBIENT_CLOSED: {
    /** The path of the closed handle, when it has one (a network namespace). */
    readonly path?: string
  }
  ERR_AMBIENT_LISTENER_FAILED: NoDetails
  ERR_AMBIENT_UNSUPPORTED_PLATFORM: {
    /** The package that cannot run here. */
    readonly package: string
    /** `process.platform` where it was imported. */
    readonly platform: string
  }
}

/** Details naming a refused value: the option or field, and what it was. */
export interface InvalidValueDetails {
  /** The option or field, as a path (`options.port`, `spec.rules[0]`). */
  readonly name: string
  /** The value that was refused. */
  readonly value: unknown
}

/** The details of a code that carries none. */
export type NoDetails = { readonly [key: string]: never }

/** The type of `details` for `code`: its entry in {@link AmbientErrorDetailsMap}, else a record. */
export type AmbientErrorDetails<C extends AmbientErrorCode = AmbientErrorCode> = C extends keyof AmbientErrorDetailsMap
  ? AmbientErrorDetailsMap[C]
  : Readonly<Record<string, unknown>>

/** Options accepted by {@link AmbientError}. */
export interface AmbientErrorOptions<C extends AmbientErrorCode = AmbientErrorCode> {
  /** The underlying error, kept for diagnosis. */
  cause?: unknown
  /** Structured facts about the failure (the offending field and value, an errno...), typed per code. */
  details?: AmbientErrorDetails<C>
}

// The brand every copy of this package agrees on (ESM and CJS builds, two
// versions side by side): undici marks its errors the same way.
const kAmbientError = Symbol.for('ambientkit.error')

/**
 * The one error type of ambientkit.
 *
 * `instanceof AmbientError` and {@link isAmbientError} recognise an error
 * made by any copy of `@ambientkit/core` loaded in the process, the ESM and
 * the CommonJS build included.
 */
export class AmbientError<C extends AmbientErrorCode = AmbientErrorCode> extends Error {
  override readonly name = 'AmbientError'
  readonly code: C
  readonly details: AmbientErrorDetails<C>

  constructor(code: C, message: string, options: AmbientErrorOptions<C> = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.details = Object.freeze({ ...options.details }) as AmbientErrorDetails<C>
  }

  /** The brand: true on every AmbientError, whichever copy of the package made it. */
  get [kAmbientError](): true {
    return true
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    // A subclass keeps the ordinary prototype check; the class itself accepts any copy's errors.
    if (this !== AmbientError) return Function.prototype[Symbol.hasInstance].call(this, value)
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[kAmbientError] === true
  }
}

/** True when `err` is an {@link AmbientError} (from any copy of this package), optionally with the given code. */
export function isAmbientError<C extends AmbientErrorCode>(err: unknown, code?: C): err is AmbientError<C> {
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
  /** A listener of a subscription threw; the publisher had no logger to report it to (the cause is the listener's error). */
  ListenerFailed: 'ERR_AMBIENT_LISTENER_FAILED',
  /** A package that needs Linux was imported on another platform. */
  UnsupportedPlatform: 'ERR_AMBIENT_UNSUPPORTED_PLATFORM',
} as const satisfies Record<string, keyof AmbientErrorDetailsMap>

/**
 * The error to throw when an operation is cancelled: keeps the signal's
 * reason as `cause` so callers can tell a timeout from a user abort.
 */
export function abortError(signal: AbortSignal, what: string): AmbientError<'ERR_AMBIENT_ABORTED'> {
  return new AmbientError(CoreErrorCode.Aborted, `${what} was aborted`, { cause: signal.reason })
}

/** Throws {@link abortError} if `signal` is already aborted. */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted === true) throw abortError(signal, what)
}

/** Shorthand for an {@link CoreErrorCode.InvalidArgument} error naming the option and its value. */
export function invalidArgument(name: string, value: unknown, expected: string): AmbientError<'ERR_AMBIENT_INVALID_ARGUMENT'> {
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
