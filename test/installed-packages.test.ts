import { execFileSync } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { publishedPackages } from './support/packages'

// What a user of the published packages gets, in a project of their own that
// has no @types/node and bundles its code: every tarball installed
// without install scripts (nothing here needs the addons), then type-checked,
// bundled and loaded twice (ESM and CJS). The packages are built in a copy of
// the repository, so that no other test's build of dist/ races with this one.
const root = new URL('..', import.meta.url).pathname
const packages = publishedPackages(root)
const scratch = mkdtempSync(join(tmpdir(), 'ambientkit-installed-'))
const repo = join(scratch, 'repo')
const project = join(scratch, 'project')
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

const run = (command: string, args: readonly string[], cwd: string): string =>
  execFileSync(command, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })

/** The repository's packages, each built with its own tsup command and packed, into a copy whose node_modules links to ours. */
function buildAndPack(): string[] {
  cpSync(join(root, 'tsconfig.base.json'), join(repo, 'tsconfig.base.json'))
  const modules = join(repo, 'node_modules')
  mkdirSync(join(modules, '@ambientkit'), { recursive: true })
  for (const entry of readdirSync(join(root, 'node_modules'))) {
    if (entry !== '@ambientkit') symlinkSync(join(root, 'node_modules', entry), join(modules, entry))
  }
  const tarballs: string[] = []
  for (const name of packages) {
    const dir = join(repo, 'packages', name)
    const { files = [] } = JSON.parse(readFileSync(join(root, 'packages', name, 'package.json'), 'utf8')) as { files?: string[] }
    // What it is built from, and what it ships besides dist/ (the proto files of the gRPC packages).
    const items = ['package.json', 'LICENSE', 'tsconfig.json', 'src', ...files.filter((item) => item !== 'dist')]
    for (const item of items) cpSync(join(root, 'packages', name, item), join(dir, item), { recursive: true })
    symlinkSync(dir, join(modules, '@ambientkit', name))
    const build = (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { scripts: { build: string } }).scripts.build
    const tsup = build.slice(build.indexOf('tsup ')).split(' ').slice(1)
    run(process.execPath, [join(root, 'node_modules/tsup/dist/cli-default.js'), ...tsup], dir)
    const [packed] = JSON.parse(run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', scratch], dir)) as Array<{ filename: string }>
    tarballs.push(join(scratch, packed!.filename))
  }
  return tarballs
}

beforeAll(() => {
  const tarballs = buildAndPack()
  mkdirSync(project)
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'user-project', private: true, type: 'module' }))
  run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--ignore-scripts', ...tarballs], project)
}, 600_000)

const version = (path: string): string => (JSON.parse(readFileSync(join(project, 'node_modules', path, 'package.json'), 'utf8')) as { version: string }).version

describe('the packed packages, installed in a project of a user', () => {
  it('hoist our @types/node; the one netlink brings stays nested under it', () => {
    expect(Number(version('@types/node').split('.')[0])).toBeGreaterThanOrEqual(22)
    expect(version('netlink/node_modules/@types/node')).toMatch(/^12\./)
  })

  it('type-check with zero errors in a project without @types/node of its own, from ESM and CommonJS', { timeout: 180_000 }, () => {
    const program = [
      "import { createWorkloadRegistry, isAmbientError, type Logger } from '@ambientkit/core'",
      "import { SpiffeId } from '@ambientkit/identity'",
      "import { captureRules, renderIptables } from '@ambientkit/redirect'",
      "import { createHboneClient } from '@ambientkit/proxy'",
      "import { createNodeAgent } from '@ambientkit/agent'",
      "export const id: string = SpiffeId.fromServiceAccount('cluster.local', 'shop', 'api').toString()",
      "export const rules: string = renderIptables(captureRules({}), 'ipv4')",
      'export const registry = createWorkloadRegistry()',
      'export const factories = [createHboneClient, createNodeAgent]',
      "export const check = (err: unknown, log: Logger): void => { if (isAmbientError(err)) log.error(err, 'failed') }",
    ].join('\n')
    writeFileSync(join(project, 'esm.mts'), program)
    writeFileSync(join(project, 'cjs.cts'), "import core = require('@ambientkit/core')\nexport const registry: core.WorkloadRegistry = core.createWorkloadRegistry()\n")
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { strict: true, noEmit: true, skipLibCheck: false, target: 'ES2022', module: 'nodenext', moduleResolution: 'nodenext' }, files: ['esm.mts', 'cjs.cts'] }),
    )
    const tsc = (): string => {
      try {
        return run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', project], project)
      } catch (err) {
        return (err as { stdout: string }).stdout
      }
    }
    expect(tsc()).toBe('')
    // And the check can fail: a type error in the program is reported.
    writeFileSync(join(project, 'esm.mts'), `${program}\nexport const wrong: number = rules\n`)
    expect(tsc()).toContain("error TS2322: Type 'string' is not assignable to type 'number'")
  })

  it('bundle with esbuild into a program that runs', async () => {
    const { build } = await import('esbuild')
    writeFileSync(join(project, 'print-rules.mjs'), "import { captureRules, renderNftables } from '@ambientkit/redirect'\nconsole.log(renderNftables(captureRules({})))\n")
    const result = await build({ entryPoints: [join(project, 'print-rules.mjs')], bundle: true, platform: 'node', format: 'esm', outfile: join(project, 'bundle.mjs'), logLevel: 'silent' })
    expect(result.errors).toEqual([])
    expect(run(process.execPath, ['bundle.mjs'], project)).toContain('add table inet ambientkit')
  })

  it('agree on AmbientError when the ESM and the CommonJS build of core are both loaded', () => {
    writeFileSync(
      join(project, 'dual.mjs'),
      [
        "import { createRequire } from 'node:module'",
        "import { AmbientError, isAmbientError } from '@ambientkit/core'",
        "const cjs = createRequire(import.meta.url)('@ambientkit/core')",
        'const verdicts = {}',
        "try { cjs.canonicalIp('not an address') } catch (err) {",
        '  verdicts.twoCopies = cjs.AmbientError !== AmbientError',
        "  verdicts.fromCjsToEsm = isAmbientError(err, 'ERR_AMBIENT_INVALID_ADDRESS') && err instanceof AmbientError",
        '}',
        "verdicts.fromEsmToCjs = cjs.isAmbientError(new AmbientError('ERR_AMBIENT_TEST', 'x'), 'ERR_AMBIENT_TEST')",
        'console.log(JSON.stringify(verdicts))',
      ].join('\n'),
    )
    expect(JSON.parse(run(process.execPath, ['dual.mjs'], project))).toEqual({ twoCopies: true, fromCjsToEsm: true, fromEsmToCjs: true })
  })
})
