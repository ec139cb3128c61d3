import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** A small tmpfs a test filled up: every write of data to it fails with ENOSPC. Root only. */
export interface FullDisk {
  /** Where it is mounted. */
  readonly dir: string
  /** Frees its space again. */
  free(): void
  /** Remounts it read-only: creating a file fails with EROFS. */
  readOnly(): void
  /** Unmounts it and removes the mount point. */
  cleanup(): void
}

/** Mounts a 64 KiB tmpfs and fills it; inodes stay free, so files can be created but not written. */
export function mountFullDisk(): FullDisk {
  const dir = mkdtempSync(join(tmpdir(), 'ak-full-disk-'))
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'tmpfs', dir])
  const filler = join(dir, 'filler')
  try {
    // A 64 KiB tmpfs takes 16 pages: more than that in one write fills it, then refuses.
    writeFileSync(filler, Buffer.alloc(1024 * 1024))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
  }
  return {
    dir,
    free: () => rmSync(filler, { force: true }),
    readOnly: () => execFileSync('mount', ['-o', 'remount,ro', dir]),
    cleanup: () => {
      execFileSync('umount', ['-l', dir])
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
