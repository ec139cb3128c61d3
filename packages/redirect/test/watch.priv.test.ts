import { afterAll, beforeAll, expect, it } from 'vitest'
import { createTestNetwork, type TestNetwork } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { openNetns, watchRuleset, type Netns } from '../src/index'

describePrivileged('watchRuleset: nf_tables changes of one namespace', ['nft', 'iptables'], () => {
  let network: TestNetwork
  let watched: Netns
  let other: Netns

  beforeAll(async () => {
    network = createTestNetwork('ak-watch')
    watched = openNetns((await network.addNamespace('watched')).path)
    other = openNetns((await network.addNamespace('other')).path)
  })
  afterAll(async () => {
    await watched?.close()
    await other?.close()
    await network?.cleanup()
  })

  it("sees changes by nft and by nf_tables-backed iptables in its namespace, not reads, not another namespace's", async () => {
    const seen: string[] = []
    let step = ''
    let changed: (() => void) | undefined
    const watch = watchRuleset(watched, () => {
      seen.push(step)
      changed?.()
    })
    /** Runs `change` and resolves at the first call of onChange after it. */
    const announced = (name: string, change: () => Promise<unknown>): Promise<void> => {
      step = name
      const next = new Promise<void>((resolve) => (changed = resolve))
      return change().then(() => next)
    }
    try {
      // Reads and another namespace's changes come first: a call for them would be filed under their step.
      step = 'quiet'
      await watched.exec('nft', ['list', 'ruleset'])
      await other.nft('add table inet elsewhere\n')
      await announced('nft', () => watched.nft('add table inet watched\nadd chain inet watched c\nadd rule inet watched c counter\n'))
      await announced('iptables', () => watched.exec('iptables', ['-t', 'nat', '-A', 'OUTPUT', '-j', 'RETURN']))
      expect(seen).not.toContain('quiet')
      expect(seen).toContain('nft')
      expect(seen).toContain('iptables')
    } finally {
      watch.close()
      watch.close()
    }
  })

  it('refuses an onChange that is not a function', () => {
    expect(() => watchRuleset(watched, 'x' as unknown as () => void)).toThrow(/^watchRuleset onChange: expected a function/)
  })
})
