import { describe, expect, expectTypeOf, it } from 'vitest'
import {
  AmbientError,
  abortError,
  canonicalIp,
  createJsonLogger,
  invalidArgument,
  isAmbientError,
  silentLogger,
  throwIfAborted,
  type InvalidValueDetails,
} from '@ambientkit/core'
import type * as Errors from '../src/errors'

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

describe('AmbientError across copies of the package', () => {
  it('is recognised when another copy of core made it (an ESM and a CJS build, two versions)', async () => {
    // The query makes Vite evaluate the module a second time: a second class, as a second copy of the package would have.
    const secondCopy = new URL('../src/errors.ts?second-copy', import.meta.url).href
    const other = (await import(/* @vite-ignore */ secondCopy)) as typeof Errors
    expect(other.AmbientError).not.toBe(AmbientError)
    const foreign = new other.AmbientError('ERR_AMBIENT_TEST', 'from the other copy')
    expect(isAmbientError(foreign)).toBe(true)
    expect(isAmbientError(foreign, 'ERR_AMBIENT_TEST')).toBe(true)
    expect(foreign instanceof AmbientError).toBe(true)
    expect(other.isAmbientError(new AmbientError('ERR_AMBIENT_TEST', 'from this copy'))).toBe(true)
  })

  it('is not fooled by a look-alike, and keeps instanceof for subclasses', () => {
    expect(isAmbientError(Object.assign(new Error('x'), { name: 'AmbientError', code: 'ERR_AMBIENT_TEST' }))).toBe(false)
    expect(isAmbientError({ code: 'ERR_AMBIENT_TEST' })).toBe(false)
    expect(isAmbientError(null)).toBe(false)
    class Special extends AmbientError {}
    expect(new AmbientError('ERR_AMBIENT_TEST', 'plain') instanceof Special).toBe(false)
    expect(new Special('ERR_AMBIENT_TEST', 'special') instanceof Special).toBe(true)
    expect(new Special('ERR_AMBIENT_TEST', 'special') instanceof AmbientError).toBe(true)
  })

  it('types details per code', () => {
    try {
      canonicalIp('nope')
    } catch (err) {
      if (!isAmbientError(err, 'ERR_AMBIENT_INVALID_ADDRESS')) throw err
      expectTypeOf(err.details).toEqualTypeOf<InvalidValueDetails>()
      expect(err.details).toEqual({ name: 'address', value: 'nope' })
    }
    expectTypeOf(new AmbientError('ERR_AMBIENT_SOMETHING_ELSE', 'x').details).toEqualTypeOf<Readonly<Record<string, unknown>>>()
    // @ts-expect-error: an INVALID_ARGUMENT error names the argument and its value
    void new AmbientError('ERR_AMBIENT_INVALID_ARGUMENT', 'x', { details: { errno: 1 } })
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
