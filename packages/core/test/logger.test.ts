import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { AmbientError, createJsonLogger, type Logger } from '@ambientkit/core'

function capture(level: 'trace' | 'info' = 'info'): { log: Logger; lines: () => Array<Record<string, unknown>> } {
  const written: string[] = []
  const log = createJsonLogger({ level, write: (line) => written.push(line) })
  return { log, lines: () => written.map((l) => JSON.parse(l) as Record<string, unknown>) }
}

describe('createJsonLogger', () => {
  it('keeps the message and the stack of log.error(err, msg)', () => {
    const { log, lines } = capture()
    const err = new Error('disk full')
    log.error(err, 'could not write the state file')
    expect(lines()).toEqual([
      expect.objectContaining({
        level: 'error',
        msg: 'could not write the state file',
        err: { type: 'Error', message: 'disk full', stack: err.stack },
      }),
    ])
  })

  it('takes what a catch clause hands over, and an error alone is its own message', () => {
    const { log, lines } = capture()
    try {
      JSON.parse('{')
    } catch (caught) {
      log.warn(caught, 'bad state file')
      log.warn(caught)
    }
    const [withMessage, alone] = lines()
    expect(withMessage).toMatchObject({ msg: 'bad state file', err: { type: 'SyntaxError' } })
    expect(alone!.msg).toBe((alone!.err as { message: string }).message)
  })

  it('writes an AmbientError with its code, details and cause chain', () => {
    const { log, lines } = capture()
    const root = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })
    log.error({ err: new AmbientError('ERR_AMBIENT_TEST', 'upstream refused', { cause: root, details: { port: 8080 } }), port: 8080 }, 'connect failed')
    expect(lines()[0]).toMatchObject({
      msg: 'connect failed',
      port: 8080,
      err: { type: 'AmbientError', code: 'ERR_AMBIENT_TEST', details: { port: 8080 }, cause: { type: 'Error', code: 'ECONNREFUSED', message: 'connect ECONNREFUSED' } },
    })
  })

  it('never lets caller fields or bindings overwrite level, time or msg', () => {
    const { log, lines } = capture()
    const before = Date.now()
    log.child({ level: 'fatal', time: 0, msg: 'bound', node: 'n1' }).info({ level: 'fatal', time: 0, msg: 'forged', pod: 'a' }, 'real')
    const [line] = lines()
    expect(line).toEqual({ level: 'info', time: expect.any(Number), node: 'n1', pod: 'a', msg: 'real' })
    expect(line!.time as number).toBeGreaterThanOrEqual(before)
    // Pino's rule: without a message argument, the object's msg is the message.
    log.info({ msg: 'from fields' })
    expect(lines()[1]!.msg).toBe('from fields')
  })

  it('writes a line without the fields rather than throw on a cycle among them', () => {
    const { log, lines } = capture()
    const cyclic: Record<string, unknown> = {}
    cyclic.self = cyclic
    const selfCaused = new Error('loop')
    Object.assign(selfCaused, { cause: selfCaused })
    expect(() => log.info({ cyclic }, 'still written')).not.toThrow()
    log.error(selfCaused, 'own cause')
    expect(lines()[0]).toMatchObject({ msg: 'still written', logError: expect.stringContaining('not serializable') })
    expect(lines()[1]).toMatchObject({ msg: 'own cause', err: { message: 'loop', cause: { message: 'loop' } } })
  })
})

describe('pino compatibility', () => {
  it('a pino logger is a Logger, and both write the same msg and err for the same calls', () => {
    const pinoLines: string[] = []
    const fromPino: Logger = pino({ level: 'info' }, { write: (line: string) => pinoLines.push(line) })
    const ours = capture()
    const err = new TypeError('bad port')
    for (const log of [fromPino, ours.log]) {
      log.info({ pod: 'a' }, 'enrolled')
      log.error(err, 'rejected')
      log.warn('plain')
    }
    const pick = (l: Record<string, unknown>) => ({ msg: l.msg, pod: l.pod, err: l.err === undefined ? undefined : { ...(l.err as object) } })
    expect(ours.lines().map(pick)).toEqual(pinoLines.map((l) => pick(JSON.parse(l) as Record<string, unknown>)))
  })
})
