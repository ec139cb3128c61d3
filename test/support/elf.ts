import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { delimiter, join } from 'node:path'

/** The symbols `file` leaves for the process to provide: undefined, not weak, and without a glibc version (Node's, not the C library's). */
export function unversionedUndefined(file: string): string[] {
  return execFileSync('objdump', ['-T', file], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.includes('*UND*') && !line.includes('GLIBC_') && !/^\S+\s+w\s/.test(line))
    .map((line) => line.trim().split(/\s+/).at(-1)!)
}

/** Every symbol `file` leaves undefined (weak ones too). */
export function undefinedSymbols(file: string): string[] {
  return execFileSync('nm', ['-D', '--undefined-only', file], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => /^\s+U /.test(line))
    .map((line) => line.trim().split(/\s+/).at(-1)!)
}

/** What `file` exports: its defined dynamic symbols. */
export function exportedSymbols(file: string): Set<string> {
  return new Set(
    execFileSync('nm', ['-D', '--defined-only', file], { encoding: 'utf8', maxBuffer: 64 << 20 })
      .split('\n')
      .map((line) => line.split(' ').at(-1)!),
  )
}

export const onPath = (command: string): boolean => (process.env.PATH ?? '').split(delimiter).some((dir) => dir !== '' && existsSync(join(dir, command)))
