import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { nativeAddonPath } from '../src/hbone/native'

// What the proxy does when its native HBONE addon is not built. The real
// build is left alone (other tests use it): the sources are copied next to
// the package, where the addon paths relative to src/hbone/native.ts lead
// nowhere, and a process of its own loads the copy (the addon is loaded
// once per process).

const ROOT = fileURLToPath(new URL('../../..', import.meta.url))
const SOURCES = fileURLToPath(new URL('../src', import.meta.url))

/**
 * Loads the workload proxy from the sources in AK_PROXY_SRC and prints the
 * data path it defaults to and why the native one is unavailable. Where it is
 * unavailable it also asks for it explicitly; where it is available that
 * would go on to need a real network namespace (root), so it does not.
 */
const PROBE_SOURCE = `
const { join } = require('node:path')
const { pathToFileURL } = require('node:url')
const load = (file) => import(pathToFileURL(join(process.env.AK_PROXY_SRC, file)).href)
;(async () => {
  const [native, proxy, core] = await Promise.all([load('hbone/native.ts'), load('workload/workload-proxy.ts'), import('@ambientkit/core')])
  const unavailable = native.nativeHboneUnavailable()
  const report = { defaultDataPath: proxy.defaultHboneDataPath(), unavailable: unavailable === undefined ? null : { code: unavailable.code, message: unavailable.message } }
  if (unavailable !== undefined) {
    const workload = { uid: 'pod-a-uid', name: 'pod-a', namespace: 'shop', serviceAccount: 'frontend', node: 'node-1', addresses: ['10.0.0.1'], protocol: 'HBONE', labels: {} }
    // No netns or identities: the data path is checked before either is used, and a netns needs root.
    report.explicitNative = await proxy
      .createWorkloadProxy({ workload, registry: core.createWorkloadRegistry(), policies: core.createPolicyStore(), dataPath: 'native' })
      .then(() => 'created', (err) => err.code ?? String(err))
  }
  console.log(JSON.stringify(report))
})()
`

interface ProbeReport {
  readonly defaultDataPath: string
  readonly unavailable: { readonly code: string; readonly message: string } | null
  readonly explicitNative?: string
}

/** Runs PROBE_SOURCE against the proxy sources in `sources`, resolving `@ambientkit/*` to sources as bench/run.mjs does. */
function probe(sources: string): ProbeReport & { stderr: string } {
  const run = spawnSync(process.execPath, ['--import', 'tsx', '-e', PROBE_SOURCE], {
    cwd: ROOT,
    env: { ...process.env, AK_PROXY_SRC: sources, TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json') },
    encoding: 'utf8',
    timeout: 30_000,
  })
  if (run.status !== 0) throw new Error(`the probe failed: ${run.stderr}`)
  return { ...(JSON.parse(run.stdout) as ProbeReport), stderr: run.stderr }
}

describe('the proxy without its native HBONE addon', () => {
  // Inside packages/proxy, so the copy still finds the repository's node_modules and tsconfig.
  const copy = fileURLToPath(new URL(`../.fallback-test-${process.pid}`, import.meta.url))

  beforeAll(() => {
    cpSync(SOURCES, join(copy, 'src'), { recursive: true })
  })

  afterAll(() => {
    rmSync(copy, { recursive: true, force: true })
  })

  it('falls back to the Node data path with one warning line, and refuses an explicit native one with an error naming the fix', () => {
    const report = probe(join(copy, 'src'))
    expect(report.defaultDataPath).toBe('node')
    expect(report.unavailable?.code).toBe('ERR_AMBIENT_HBONE_NATIVE_UNAVAILABLE')
    // Words that work wherever the package is installed, not only in this repository.
    expect(report.unavailable?.message).toContain(`no prebuilt addon for linux-${process.arch}`)
    expect(report.unavailable?.message).toContain('npm rebuild @ambientkit/proxy')
    expect(report.explicitNative).toBe('ERR_AMBIENT_HBONE_NATIVE_UNAVAILABLE')
    const lines = report.stderr.split('\n').filter((line) => line !== '')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^\[ambientkit\] the native HBONE data path is unavailable \(.*\); HBONE runs on the Node data path\. For the native one, .*npm rebuild @ambientkit\/proxy\.$/)
  })
})

const built = existsSync(nativeAddonPath())
if (!built && process.env.CI) throw new Error('the native HBONE addon is not built (npm run native -w @ambientkit/proxy)')
if (!built) console.warn('[skip] native fallback control: addon not built (npm run native -w @ambientkit/proxy)')

// The control: the same probe on the real sources, so the copy is what made the difference.
;(built ? describe : describe.skip)('the proxy with its native HBONE addon built', () => {
  it('defaults to the native data path, and warns of nothing', () => {
    expect(probe(SOURCES)).toEqual({ defaultDataPath: 'native', unavailable: null, stderr: '' })
  })
})
