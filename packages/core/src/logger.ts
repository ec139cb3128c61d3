/**
 * One logging method, with pino's signatures: a message; a structured object
 * first and a message after it; or an error first (its message and stack are
 * kept under `err`) and a message after it. Anything a `catch` clause hands
 * over can be logged as it is, so a pino instance can be passed wherever a
 * {@link Logger} is asked for, and ours wherever code was written for pino.
 *
 * @example
 * ```ts
 * import { createJsonLogger } from '@ambientkit/core'
 *
 * const log = createJsonLogger({ bindings: { component: 'example' } })
 * log.info({ workload: 'shop/api' }, 'enrolled')
 * try {
 *   JSON.parse('{')
 * } catch (err) {
 *   log.error(err, 'could not read the state file') // msg, err.message and err.stack
 * }
 * ```
 */
export interface LogFn {
  (message: string): void
  /**
   * `fields` are merged into the line; an `Error` is written under `err`
   * with its type, message, stack, code and cause. Without `message`, the
   * error's message (or `fields.msg`) is the line's message.
   */
  (fieldsOrError: unknown, message?: string): void
}

/** The logger ambientkit writes to. Pino-compatible. */
export interface Logger {
  trace: LogFn
  debug: LogFn
  info: LogFn
  warn: LogFn
  error: LogFn
  fatal: LogFn
  /** A logger that adds `bindings` to every line it writes. */
  child(bindings: Record<string, unknown>): Logger
}

const noop: LogFn = () => {}

/** The default logger: writes nothing. */
export const silentLogger: Logger = {
  trace: noop,
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  fatal: noop,
  child: () => silentLogger,
}

/** Log levels, lowest first. */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal'

const levels: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal']

/** Options for {@link createJsonLogger}. */
export interface JsonLoggerOptions {
  /** Lines below this level are dropped. Default `'info'`. */
  level?: LogLevel
  /** Where lines go. Default: `process.stderr`. */
  write?: (line: string) => void
  /** Fields added to every line (never `level`, `time` or `msg`: those are the logger's). */
  bindings?: Record<string, unknown>
}

// Written by the logger on every line; a field of the same name is dropped
// rather than allowed to make a line lie about its level, time or message.
const RESERVED = new Set(['level', 'time', 'msg'])

const isError = (value: unknown): value is Error =>
  value instanceof Error || Object.prototype.toString.call(value) === '[object Error]'

function withoutReserved(fields: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(fields).filter(([key]) => !RESERVED.has(key)))
}

/**
 * A small JSON-lines logger (one object a line, pino's field names: `level`,
 * `time`, `msg`, `err`) for programs that do not bring their own.
 *
 * @example
 * ```ts
 * import { createJsonLogger } from '@ambientkit/core'
 *
 * const log = createJsonLogger({ level: 'debug', write: (line) => process.stdout.write(line) })
 * log.child({ node: 'node-1' }).debug({ pods: 3 }, 'reconciled')
 * // {"level":"debug","time":1767225600000,"node":"node-1","pods":3,"msg":"reconciled"}
 * ```
 */
export function createJsonLogger(options: JsonLoggerOptions = {}): Logger {
  const min = levels.indexOf(options.level ?? 'info')
  const write = options.write ?? ((line: string) => process.stderr.write(line))
  const bindings = withoutReserved(options.bindings ?? {})
  const method = (level: LogLevel): LogFn => {
    if (levels.indexOf(level) < min) return noop
    return (first: unknown, message?: string) => {
      let fields: Record<string, unknown>
      let msg: unknown = message
      if (typeof first === 'string') {
        msg = first
        fields = {}
      } else if (isError(first)) {
        fields = { err: first }
        msg ??= first.message
      } else if (typeof first === 'object' && first !== null) {
        fields = withoutReserved(first)
        msg ??= (first as { msg?: unknown }).msg
      } else {
        fields = first === undefined ? {} : { value: first }
      }
      const head = { level, time: Date.now() }
      const tail = msg === undefined ? {} : { msg }
      let text: string
      try {
        text = JSON.stringify({ ...head, ...bindings, ...fields, ...tail }, replacer)
      } catch (err) {
        // A cycle among the fields: the line is still written, without them, rather than thrown at the caller.
        text = JSON.stringify({ ...head, ...bindings, ...tail, logError: `fields not serializable: ${(err as Error).message}` }, replacer)
      }
      write(`${text}\n`)
    }
  }
  return {
    trace: method('trace'),
    debug: method('debug'),
    info: method('info'),
    warn: method('warn'),
    error: method('error'),
    fatal: method('fatal'),
    child: (more) => createJsonLogger({ ...options, bindings: { ...bindings, ...more } }),
  }
}

// A cause chain is followed this deep: enough for a wrapped wrapped error, and
// a cycle (an error that is its own cause) cannot recurse forever.
const MAX_CAUSES = 8

/** An error as pino's standard serializer writes it: type, message, stack, and code, details and cause when there. */
function serializeError(err: Error, depth = 0): Record<string, unknown> {
  const { code, details } = err as { code?: unknown; details?: unknown }
  const cause: unknown = err.cause
  return {
    type: err.name,
    message: err.message,
    stack: err.stack,
    ...(code === undefined ? {} : { code }),
    ...(details === undefined || (typeof details === 'object' && details !== null && Object.keys(details).length === 0) ? {} : { details }),
    ...(cause === undefined || depth >= MAX_CAUSES ? {} : { cause: isError(cause) ? serializeError(cause, depth + 1) : cause }),
  }
}

function replacer(_key: string, value: unknown): unknown {
  if (isError(value)) return serializeError(value)
  return typeof value === 'bigint' ? value.toString() : value
}
