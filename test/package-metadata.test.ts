import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

// What a registry and a user see of each published package: where it comes
// from, under which licence, on which Node, and whether a bundler may drop it.
const root = new URL('..', import.meta.url).pathname
const readJson = (path: string): Record<string, unknown> => JSON.parse(readFileSync(join(root, path), 'utf8')) as Record<string, unknown>
const rootPackage = readJson('package.json')
const packages = readdirSync(join(root, 'packages')).map((name) => `packages/${name}`)
const privateOnes = [...readdirSync(join(root, 'examples')).map((name) => `examples/${name}`), 'bench']
const repository = rootPackage.repository as { url: string }

describe.each(packages)('%s/package.json', (dir) => {
  const pkg = readJson(`${dir}/package.json`)

  it('says where it comes from and where to report bugs', () => {
    expect(pkg.repository).toEqual({ type: 'git', url: repository.url, directory: dir })
    expect(pkg.homepage).toBe(`${repository.url.replace(/^git\+/, '').replace(/\.git$/, '')}/tree/main/${dir}#readme`)
    expect(pkg.bugs).toEqual(rootPackage.bugs)
  })

  it('carries the Apache-2.0 licence text', () => {
    expect(pkg.license).toBe('Apache-2.0')
    expect(readFileSync(join(root, dir, 'LICENSE'), 'utf8')).toBe(readFileSync(join(root, 'LICENSE'), 'utf8'))
    const [packed] = JSON.parse(
      execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts', '-w', dir], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }),
    ) as Array<{ files: Array<{ path: string }> }>
    expect(packed!.files.map((f) => f.path)).toContain('LICENSE')
  })

  it('runs on the Node lines the repository supports, with the types of one of them', () => {
    expect(pkg.engines).toEqual(rootPackage.engines)
    // Its .d.ts files name AbortSignal, Buffer and node: modules: without a
    // @types/node of its own, a project that has none would get the ancient
    // one a dependency (netlink) brings.
    expect((pkg.dependencies as Record<string, string>)['@types/node']).toBe('>=22')
    expect(pkg.scripts).toEqual(expect.objectContaining({ build: expect.stringContaining('--target node22') }))
  })

  it('is installed only where it can run', () => {
    // Capture and the node agent need Linux; core and identity run anywhere.
    // The proxy's own os is its owner's call: its HBONE client and server are to run anywhere.
    if (dir === 'packages/proxy') return
    expect(pkg.os).toEqual(dir === 'packages/redirect' || dir === 'packages/agent' ? ['linux'] : undefined)
  })

  it('lets bundlers drop it when nothing of it is used', () => {
    expect(pkg.sideEffects).toBe(false)
  })
})

describe.each(privateOnes)('%s/package.json', (dir) => {
  it('asks for the Node lines the repository supports', () => {
    expect(readJson(`${dir}/package.json`).engines).toEqual(rootPackage.engines)
  })
})
