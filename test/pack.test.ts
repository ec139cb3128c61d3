import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'

// What a user gets from `npm install @ambientkit/core`: the packed tarball,
// installed into a scratch project, must work from ESM and CommonJS and carry
// types for both.
const root = new URL('..', import.meta.url).pathname
const scratch = mkdtempSync(join(tmpdir(), 'ambientkit-pack-'))
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

const run = (command: string, args: string[], cwd = scratch): string =>
  execFileSync(command, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })

describe('published @ambientkit/core', () => {
  it('installs from its tarball and works with import, require and types', { timeout: 180_000 }, () => {
    run('npm', ['run', 'build', '-w', '@ambientkit/core'], root)
    const packed = JSON.parse(run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', scratch, '-w', '@ambientkit/core'], root)) as Array<{ filename: string; files: Array<{ path: string }> }>
    const tarball = packed[0]!
    const files = tarball.files.map((f) => f.path)
    expect(files).toEqual(expect.arrayContaining(['dist/index.js', 'dist/index.cjs', 'dist/index.d.ts', 'dist/index.d.cts', 'README.md', 'package.json']))
    expect(files.some((f) => f.startsWith('src/') || f.startsWith('test/'))).toBe(false)

    writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }))
    run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(scratch, tarball.filename), `typescript@${createRequire(import.meta.url)('typescript/package.json').version}`, '@types/node@22'])

    writeFileSync(join(scratch, 'esm.mjs'), "import { parseSocketAddress } from '@ambientkit/core'\nconsole.log(JSON.stringify(parseSocketAddress('[2001:db8::1]:15008')))\n")
    writeFileSync(join(scratch, 'cjs.cjs'), "const { isAmbientError, canonicalIp } = require('@ambientkit/core')\ntry { canonicalIp('nope') } catch (err) { console.log(isAmbientError(err, 'ERR_AMBIENT_INVALID_ADDRESS')) }\n")
    expect(JSON.parse(run('node', ['esm.mjs']))).toEqual({ address: '2001:db8::1', port: 15008, family: 6 })
    expect(run('node', ['cjs.cjs']).trim()).toBe('true')

    const typed = "import { createWorkloadRegistry, type Workload } from '@ambientkit/core'\nconst w: Workload = { uid: 'u', name: 'n', namespace: 'ns', serviceAccount: 'sa', node: 'n1', addresses: [], protocol: 'HBONE', labels: {} }\nconst n: number = createWorkloadRegistry().upsertWorkload(w).addresses.length\nexport { n }\n"
    writeFileSync(join(scratch, 'typed.mts'), typed)
    writeFileSync(join(scratch, 'typed.cts'), typed.replace("import { createWorkloadRegistry, type Workload } from '@ambientkit/core'", "import core = require('@ambientkit/core')\ntype Workload = core.Workload\nconst { createWorkloadRegistry } = core"))
    run(join(scratch, 'node_modules/.bin/tsc'), ['--noEmit', '--strict', '--module', 'node16', '--moduleResolution', 'node16', '--types', 'node', 'typed.mts', 'typed.cts'])
    // A type error must be caught too, or the check above proves nothing.
    writeFileSync(join(scratch, 'wrong.mts'), "import { parseSocketAddress } from '@ambientkit/core'\nconst port: string = parseSocketAddress('1.2.3.4:5').port\nexport { port }\n")
    expect(() => run(join(scratch, 'node_modules/.bin/tsc'), ['--noEmit', '--strict', '--module', 'node16', '--moduleResolution', 'node16', 'wrong.mts'])).toThrow()
  })
})
