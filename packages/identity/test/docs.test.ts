import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'

const root = fileURLToPath(new URL('../../..', import.meta.url))

describe('docs/identity.md', () => {
  it('runs its example and prints what the doc says', async () => {
    const doc = readFileSync(join(root, 'docs/identity.md'), 'utf8')
    const block = /<!-- ci-example:begin -->\n```ts\n([\s\S]*?)```\n<!-- ci-example:end -->\n\nIt prints:\n\n```\n([\s\S]*?)```/.exec(doc)
    expect(block).not.toBeNull()
    const dir = mkdtempSync(join(tmpdir(), 'ak-id-doc-'))
    try {
      const file = join(dir, 'example.mts')
      writeFileSync(file, block![1]!)
      // Run from the repo root so tsx resolves @ambientkit/* through tsconfig paths.
      const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', file], { cwd: root, timeout: 60_000 })
      expect(stdout).toBe(block![2])
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
