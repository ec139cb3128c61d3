import { closeSync, openSync } from 'node:fs'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { describePrivileged } from '../../../test/support/privileged'
import { createTestNetwork, type TestNamespace, type TestNetwork } from '../../../test/support/netns'
import { native } from '../src/native'
import { openNetns } from '../src'

/**
 * libnftables (1.0.6, Debian 12) waits for the kernel's answer with
 * select(), whose fd_set holds descriptors below FD_SETSIZE (1024) only:
 * glibc aborts the whole process ("bit out of range 0 - FD_SETSIZE on
 * fd_set") when the context's netlink socket is numbered higher. A node
 * proxy or agent with a few hundred pods holds that many (bench/pods.ts died
 * at about 250 pods). Its own file, so that without the fix only this
 * file's worker dies.
 */

describePrivileged('nft in a process holding more than FD_SETSIZE descriptors', ['ip'], () => {
  let network: TestNetwork
  let ns: TestNamespace
  const held: number[] = []
  beforeAll(async () => {
    network = createTestNetwork('aknftfd')
    ns = await network.addNamespace()
  })
  afterAll(async () => {
    for (const fd of held.splice(0)) closeSync(fd)
    await network?.cleanup()
  })

  it('runs scripts with libnftables while every descriptor below 1100 is taken', async () => {
    expect(native().nftAvailable(), 'this test is about the libnftables path').toBeNull()
    // Every free number below 1100 taken, so any new descriptor is numbered above FD_SETSIZE.
    for (let fd = openSync('/dev/null', 'r'); ; fd = openSync('/dev/null', 'r')) {
      held.push(fd)
      if (fd >= 1100) break
    }
    const netns = openNetns(ns.path)
    try {
      for (let i = 0; i < 3; i++) {
        expect(await netns.nft(`add table inet ak_fd${i}`)).toBe('')
        expect(await netns.nft('list tables')).toContain(`table inet ak_fd${i}`)
      }
    } finally {
      await netns.close()
    }
  })
})
