import { closeSync, openSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect, it } from 'vitest'
import { mountFullDisk } from '../../../test/support/disk'
import { describePrivileged } from '../../../test/support/privileged'
import { createLogSink } from '../src/process-util'

describePrivileged('local mesh log lines on a full disk (issue 15)', ['mount', 'umount'], () => {
  it('drops and counts the lines a full disk refuses, never throws, and reports the count once lines get through', () => {
    const disk = mountFullDisk()
    const file = join(disk.dir, 'node-1.log')
    const fd = openSync(file, 'a')
    try {
      const sink = createLogSink(fd)
      for (let i = 0; i < 5; i++) expect(() => sink.write(`{"msg":"lost ${i}"}\n`)).not.toThrow()
      expect(sink.lostLines).toBe(5)
      disk.free()
      sink.write('{"msg":"back"}\n')
      sink.write('{"msg":"again"}\n')
      const lines = readFileSync(file, 'utf8').trimEnd().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>)
      expect(lines).toEqual([
        { msg: 'back' },
        expect.objectContaining({ level: 'error', lostLines: 5, lastError: expect.stringContaining('ENOSPC') }),
        { msg: 'again' },
      ])
      expect(sink.lostLines).toBe(5)
    } finally {
      closeSync(fd)
      disk.cleanup()
    }
  })
})
