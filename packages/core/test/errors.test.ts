import { describe, expect, it } from 'vitest'
import { AmbientError, abortError, createJsonLogger, invalidArgument, isAmbientError, silentLogger, throwIfAborted } from '@ambientkit/core'

describe('AmbientError', () => {
  it('keeps code, cause and frozen details', () => {
    const cause = new Error('ECONNREFUSED')
    const err = new AmbientError('ERR_AMBIENT_TEST', 'failed', { cause, details: { errno: 111 } })
    expect(err).toBeInstanceOf(Error)
    expect(err.name).toBe('AmbientError')
    expect(err.code).toBe('ERR_AMBIENT_TEST')
    expect(err.cause).toBe(cause)
    expect(err.details).toEqual({ errno: 111 })
    expect(Object.isFrozen(err.details)).toBe(true)
    expect(isAmbientError(err)).toBe(true)
    expect(isAmbientError(err, 'ERR_AMBIENT_TEST')).toBe(true)
    expect(isAmbientError(err, 'ERR_AMBIENT_OTHER')).toBe(false)
    expect(isAmbientError(cause)).toBe(false)
  })

  it('names the option, the expectation and the value', () => {
    const err = invalidArgument('options.port', -1, 'a port 1-65535')
    expect(err.code).toBe('ERR_AMBIENT_INVALID_ARGUMENT')
    expect(err.message).toBe('options.port: expected a port 1-65535, got -1')
    expect(err.details).toEqual({ name: 'options.port', value: -1 })
  })

  it('turns an aborted signal into ERR_AMBIENT_ABORTED with the reason as cause', () => {
    const controller = new AbortController()
    expect(() => throwIfAborted(controller.signal, 'connect')).not.toThrow()
    controller.abort(new Error('timeout'))
    expect(() => throwIfAborted(controller.signal, 'connect')).toThrow('connect was aborted')
    expect(abortError(controller.signal, 'x').cause).toEqual(new Error('timeout'))
  })
})

describe('loggers', () => {
  it('the silent logger accepts every call and child', () => {
    expect(() => silentLogger.child({ a: 1 }).error({ err: new Error('x') }, 'msg')).not.toThrow()
  })

  it('the JSON logger writes one object a line, filters by level and keeps bindings', () => {
    const lines: string[] = []
    const log = createJsonLogger({ level: 'info', write: (line) => lines.push(line) }).child({ node: 'n1' })
    log.debug('hidden')
    log.info('hello')
    log.warn({ err: Object.assign(new AmbientError('ERR_AMBIENT_X', 'boom')), bytes: 10n }, 'failed')
    expect(lines).toHaveLength(2)
    expect(lines.every((l) => l.endsWith('\n'))).toBe(true)
    const [first, second] = lines.map((l) => JSON.parse(l))
    expect(first).toMatchObject({ level: 'info', node: 'n1', msg: 'hello' })
    expect(second).toMatchObject({ level: 'warn', node: 'n1', msg: 'failed', bytes: '10', err: { type: 'AmbientError', message: 'boom', code: 'ERR_AMBIENT_X' } })
  })
})
