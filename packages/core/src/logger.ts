/**
 * One logging method: a message, or a structured object first and a message
 * after it. The shape pino, bunyan-style and many other loggers share, so a
 * pino instance can be passed wherever a {@link Logger} is asked for.
 */
export interface LogFn {
  (message: string): void
  (fields: Record<string, unknown>, message?: string): void
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
  /** Fields added to every line. */
  bindings?: Record<string, unknown>
}

/**
 * A small JSON-lines logger (one object a line, pino's field names: `level`,
 * `time`, `msg`) for programs that do not bring their own.
 */
export function createJsonLogger(options: JsonLoggerOptions = {}): Logger {
  const min = levels.indexOf(options.level ?? 'info')
  const write = options.write ?? ((line: string) => process.stderr.write(line))
  const bindings = options.bindings ?? {}
  const method = (level: LogLevel): LogFn => {
    if (levels.indexOf(level) < min) return noop
    return ((first: string | Record<string, unknown>, message?: string) => {
      const fields = typeof first === 'string' ? { msg: first } : { ...first, msg: message ?? first.msg }
      write(`${JSON.stringify({ level, time: Date.now(), ...bindings, ...fields }, errorReplacer)}\n`)
    }) as LogFn
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

function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code
    return { type: value.name, message: value.message, ...(code === undefined ? {} : { code }) }
  }
  return typeof value === 'bigint' ? value.toString() : value
}
