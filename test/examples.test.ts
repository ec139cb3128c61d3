import { execFileSync } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

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

// Every other ```ts block of the documentation, in the guides (docs/*.md),
// the READMEs, and the JSDoc of packages/*/src (what the API site shows), is
// type-checked against the packages: a block a user copies must compile. A
// block that is only a piece of a program says so with ```ts fragment and is
// not checked. Each block is a module of its own (top-level await allowed).
interface Block {
  /** Where it is: `file:line` of its opening fence. */
  where: string
  code: string
}

const sourceFiles = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sourceFiles(path)
    return entry.name.endsWith('.ts') ? [path] : []
  })

const lineOf = (text: string, index: number): number => text.slice(0, index).split('\n').length

function blocksIn(file: string, text: string, offset = 0): Block[] {
  return [...text.matchAll(/(<!-- example: \S+ -->\n)?```ts([^\n]*)\n([\s\S]*?)```/g)]
    .filter((m) => m[1] === undefined && m[2]!.trim() !== 'fragment')
    .map((m) => ({ where: `${file}:${offset + lineOf(text, m.index)}`, code: m[3]! }))
}

function jsdocBlocks(file: string): Block[] {
  const text = readFileSync(join(root, file), 'utf8')
  return [...text.matchAll(/\/\*\*[\s\S]*?\*\//g)].flatMap((comment) => {
    const body = comment[0].split('\n').map((line) => line.replace(/^\s*(?:\/\*\*|\*\/|\*)\s?/, '').replace(/\s*\*\/$/, '')).join('\n')
    return blocksIn(file, body, lineOf(text, comment.index) - 1)
  })
}

const blocks: Block[] = [
  ...documents.flatMap((document) => {
    try {
      return blocksIn(document, readFileSync(join(root, document), 'utf8'))
    } catch {
      return []
    }
  }),
  ...readdirSync(join(root, 'packages')).flatMap((pkg) =>
    sourceFiles(join(root, 'packages', pkg, 'src')).flatMap((path) => jsdocBlocks(path.slice(root.length))),
  ),
]

describe('documented code blocks', () => {
  // Inside the repository, so that node_modules (@types/node, the packages) resolves as for any source file.
  const dir = mkdtempSync(join(root, 'node_modules', '.doc-blocks-'))
  const files = blocks.map((block, i) => `block-${i}.ts`)
  let diagnostics: string[] = []

  beforeAll(() => {
    blocks.forEach((block, i) => writeFileSync(join(dir, files[i]!), `${block.code}\nexport {}\n`))
    // A block that cannot compile: if tsc does not report it, it checked nothing.
    writeFileSync(join(dir, 'sentinel.ts'), "export const port: number = '15008'\n")
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({ extends: join(root, 'tsconfig.json'), compilerOptions: { noEmit: true }, include: ['*.ts'], exclude: [] }),
    )
    try {
      execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    } catch (err) {
      diagnostics = (err as { stdout: string }).stdout.split('\n').filter((line) => line.includes('error TS'))
    }
  }, 120_000)
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it('are found in the guides and the JSDoc, and checked', () => {
    expect(blocks.filter((b) => b.where.startsWith('docs/')).length).toBeGreaterThan(0)
    expect(blocks.filter((b) => b.where.startsWith('packages/')).length).toBeGreaterThan(0)
    expect(diagnostics.filter((line) => line.includes('sentinel.ts(')).length).toBe(1)
  })

  it.each(blocks.map((block, i) => [block.where, i] as const))('%s compiles', (where, i) => {
    const errors = diagnostics.filter((line) => line.includes(`${files[i]}(`)).map((line) => line.slice(line.indexOf('(')))
    expect(errors, `${where} (mark a piece of a program with \`\`\`ts fragment)`).toEqual([])
  })
})
