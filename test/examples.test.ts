import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

// Every README or guide marks its runnable examples with
// `<!-- example: path/to/file.ts -->` just above a ```ts block. The block must
// be the file (less its leading comment lines) and the file must run: an
// example a user copies is never stale or broken.
const root = new URL('..', import.meta.url).pathname
const documents = [
  'README.md',
  ...readdirSync(join(root, 'packages')).map((p) => `packages/${p}/README.md`),
  ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`),
]

interface Example {
  document: string
  file: string
  block: string
}

function examplesIn(document: string): Example[] {
  let text: string
  try {
    text = readFileSync(join(root, document), 'utf8')
  } catch {
    return []
  }
  return [...text.matchAll(/<!-- example: (\S+) -->\n```ts\n([\s\S]*?)```/g)].map((m) => ({ document, file: m[1]!, block: m[2]! }))
}

const examples = documents.flatMap(examplesIn)

describe('documented examples', () => {
  it('exist', () => {
    expect(examples.length).toBeGreaterThan(0)
  })

  it.each(examples.map((e) => [`${e.document} → ${e.file}`, e] as const))('%s is current and runs', (_name, example) => {
    const source = readFileSync(join(root, example.file), 'utf8').replace(/^(\/\/.*\n)+/, '')
    expect(source).toBe(example.block)
    // tsx honours the root tsconfig paths, so the example runs against the sources.
    execFileSync(join(root, 'node_modules/.bin/tsx'), ['--tsconfig', join(root, 'tsconfig.json'), join(root, example.file)], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60_000,
    })
  })
})
