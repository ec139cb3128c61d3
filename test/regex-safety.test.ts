import { readdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { isSafe } from 'redos-detector'
import ts from 'typescript'
import { describe, expect, it } from 'vitest'

// No regular expression in our sources may backtrack catastrophically: many
// of them read what a peer or a file sent. Every regex literal of every
// source file is checked by redos-detector, which explores the expression's
// backtracking paths rather than timing it.

const root = fileURLToPath(new URL('..', import.meta.url))

function regexLiterals(file: string): Array<{ pattern: string; flags: string; line: number }> {
  const text = readFileSync(file, 'utf8')
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true)
  const found: Array<{ pattern: string; flags: string; line: number }> = []
  const visit = (node: ts.Node): void => {
    if (node.kind === ts.SyntaxKind.RegularExpressionLiteral) {
      const literal = node.getText(source)
      const end = literal.lastIndexOf('/')
      found.push({ pattern: literal.slice(1, end), flags: literal.slice(end + 1), line: source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1 })
    }
    ts.forEachChild(node, visit)
  }
  visit(source)
  return found
}

const files = ['packages', 'examples'].flatMap((top) =>
  readdirSync(`${root}/${top}`).flatMap((pkg) => {
    try {
      return readdirSync(`${root}/${top}/${pkg}/src`, { recursive: true, encoding: 'utf8' })
        .filter((f) => f.endsWith('.ts'))
        .map((f) => `${top}/${pkg}/src/${f}`)
    } catch {
      return []
    }
  }),
)

describe('regular expressions', () => {
  it('finds the sources and their regexes to check', () => {
    expect(files.length).toBeGreaterThan(20)
    expect(files.flatMap((file) => regexLiterals(`${root}/${file}`)).length).toBeGreaterThan(30)
    // The checker itself: a classic exponential pattern is caught.
    expect(isSafe(/^(a+)+$/).safe).toBe(false)
  })

  it.each(files)('%s has no regex with catastrophic backtracking', (file) => {
    for (const { pattern, flags, line } of regexLiterals(`${root}/${file}`)) {
      const result = isSafe(new RegExp(pattern, flags))
      expect(result.safe, `${file}:${line} /${pattern}/${flags}: ${result.error ?? ''}`).toBe(true)
    }
  })
})
