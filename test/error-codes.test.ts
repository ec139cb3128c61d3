import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

const root = new URL('..', import.meta.url).pathname

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sourceFiles(path)
    return /\.(ts|c|h)$/.test(entry.name) ? [path] : []
  })
}

describe('docs/errors.md', () => {
  it('lists every error code the packages can raise', () => {
    const documented = readFileSync(join(root, 'docs/errors.md'), 'utf8')
    const codes = new Set<string>()
    for (const pkg of readdirSync(join(root, 'packages'))) {
      for (const dir of ['src', 'native']) {
        const path = join(root, 'packages', pkg, dir)
        if (!existsSync(path)) continue
        const files = sourceFiles(path)
        for (const file of files) for (const match of readFileSync(file, 'utf8').matchAll(/ERR_AMBIENT_[A-Z0-9_]+/g)) codes.add(match[0])
      }
    }
    expect(codes.size).toBeGreaterThan(0)
    const missing = [...codes].filter((code) => !documented.includes(`\`${code}\``)).sort()
    expect(missing, 'codes raised in packages/*/src but missing from docs/errors.md').toEqual([])
  })
})

describe('errors thrown by the packages', () => {
  // The proxy follows once its rewrite lands (it still throws an AggregateError).
  const packages = ['core', 'identity', 'redirect', 'agent']
  const plain = /\b(?:throw|reject\(|abort\()\s*new (?:Error|TypeError|RangeError|AggregateError)\b|Promise\.reject\(\s*new (?:Error|TypeError|RangeError|AggregateError)\b/

  it.each(packages)('are all AmbientErrors in @ambientkit/%s', (pkg) => {
    const offending = sourceFiles(join(root, 'packages', pkg, 'src'))
      .flatMap((file) => readFileSync(file, 'utf8').split('\n').map((line, i) => ({ file, line: i + 1, text: line.trim() })))
      .filter(({ text }) => plain.test(text))
      .map(({ file, line, text }) => `${file.slice(root.length)}:${line}: ${text}`)
    expect(offending).toEqual([])
  })
})

