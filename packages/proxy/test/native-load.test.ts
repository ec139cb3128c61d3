import { execFile, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NATIVE_CONSTANTS, constantsMismatch, loadNativeHbone, nativeAddonPath } from '../src/hbone/native'
import { nativeAddonOrSkip, writeSmokeMaterial } from './support/native'
import { takeChildCrashes } from '../../../test/support/child-crashes'

// What the HBONE addon does when loading goes wrong or memory and N-API
// calls fail: test builds of it (scripts/prebuilds.mjs --variant) that bind
// a symbol Node does not export, ask for a newer nghttp2 than Node links, or
// inject failures, each loaded in a process of its own.

const ROOT = fileURLToPath(new URL('../../..', import.meta.url))
const FAULTS_SCRIPT = fileURLToPath(new URL('./support/native-faults.mjs', import.meta.url))
const addon = nativeAddonOrSkip('loading the native HBONE addon')
const describeNative = addon === undefined ? describe.skip : describe

describeNative('loading the native HBONE addon', () => {
  let dir: string
  let material: string
  const variant = (name: string): string => join(dir, `${name}.node`)

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ambientkit-native-load-'))
    material = await writeSmokeMaterial(join(dir, 'material.json'))
    await Promise.all(
      ['faults', 'missing-symbol', 'nghttp2-too-new'].map((name) =>
        promisify(execFile)(process.execPath, [join(ROOT, 'scripts', 'prebuilds.mjs'), '--variant', name, '--out', variant(name)], { cwd: ROOT }),
      ),
    )
  }, 180_000)

  afterAll(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  it('fails the require() of a build that binds a symbol Node does not export (linked -z now), and the loader takes the next build', () => {
    const alone = loadNativeHbone([variant('missing-symbol')])
    expect('failure' in alone && alone.failure.message).toMatch(/undefined symbol: ambientkit_symbol_node_does_not_export/)
    const next = loadNativeHbone([variant('missing-symbol'), nativeAddonPath()])
    expect('path' in next && next.path).toBe(nativeAddonPath())
  })

  it('refuses a build for a newer nghttp2 than Node links, naming both versions', () => {
    const loaded = loadNativeHbone([variant('nghttp2-too-new')])
    expect('failure' in loaded && loaded.failure.message).toContain(
      `ambient_hbone was built for nghttp2 1.255 (that major version, this minor or later), but this Node links nghttp2 ${process.versions.nghttp2}`,
    )
  })

  it('refuses an addon whose event numbers differ from the loader’s, naming the first difference', () => {
    expect(constantsMismatch((addon as unknown as { constants: unknown }).constants)).toBeUndefined()
    const skewed = join(dir, 'skewed.cjs')
    writeFileSync(
      skewed,
      `const a = require(${JSON.stringify(nativeAddonPath())})\nmodule.exports = { ...a, constants: { ...a.constants, events: { ...a.constants.events, Settings: 9 } } }\n`,
    )
    const loaded = loadNativeHbone([skewed])
    expect('failure' in loaded && loaded.failure.message).toContain('constants.events.Settings is 9 in the addon, 8 here')
    expect(NATIVE_CONSTANTS.events.Settings).toBe(8)
  })

  const scenario = (name: string): Record<string, unknown> & { seen: Record<'client' | 'server', Array<{ event: string; args: unknown[] }>> & { uncaught: string[] } } => {
    const run = spawnSync(process.execPath, [FAULTS_SCRIPT, variant('faults'), material, name], { encoding: 'utf8', timeout: 30_000 })
    if (run.status !== 0) throw new Error(`scenario ${name} failed (${run.status}): ${run.stdout}${run.stderr}`)
    return JSON.parse(run.stdout) as ReturnType<typeof scenario>
  }
  const events = (list: Array<{ event: string }>, name: string): number => list.filter((entry) => entry.event === name).length

  it('delivers every StreamClose and each Close while no event can be allocated', () => {
    const { seen } = scenario('terminal')
    expect(events(seen.client, 'StreamClose')).toBe(2)
    expect(seen.client.at(-1)).toEqual({ event: 'Close', args: ['destroyed by the test'] })
    // The server could not queue the client's GOAWAY: it fails, and still ends both streams.
    expect(events(seen.server, 'StreamClose')).toBe(2)
    expect(seen.server.at(-1)).toEqual({ event: 'Close', args: ['out of memory'] })
  })

  it('fails the session, rather than dropping it, when an event that ends nothing cannot be queued', () => {
    const { seen } = scenario('ping')
    expect(events(seen.client, 'PingAck')).toBe(0)
    expect(seen.client.at(-1)).toEqual({ event: 'Close', args: ['out of memory'] })
  })

  it('throws ERR_AMBIENT_HBONE_NAPI naming the call when an N-API call a JavaScript caller waits on fails', () => {
    const result = scenario('call')
    expect(result.thrown).toEqual({ code: 'ERR_AMBIENT_HBONE_NAPI', message: 'ambient_hbone: N-API call failed: napi_create_int32(env, value, &result)' })
    expect(result.after).toBe(0)
  })

  it('destroys the session and raises an uncaught exception when an event cannot be handed to JavaScript', () => {
    const { seen } = scenario('delivery')
    const reason = 'ambient_hbone: an event could not be delivered to JavaScript: make_number(env, e->type, &argv[0]) failed'
    expect(seen.client.at(-1)).toEqual({ event: 'Close', args: [reason] })
    expect(seen.uncaught).toEqual([reason])
    // Raised on purpose in the child: checked above, not for the crash harness to report.
    expect(takeChildCrashes()).toEqual([expect.stringContaining('an event could not be delivered to JavaScript')])
  })
})
