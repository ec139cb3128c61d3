import type { TestNamespace } from '../../../../test/support/netns'

/** The rule listings of a namespace (iptables, ip6tables, nft) as its programs print them. */
export const RULE_LISTINGS: ReadonlyArray<readonly [string, ...string[]]> = [['iptables-save'], ['ip6tables-save'], ['nft', 'list', 'ruleset']]

/**
 * What `commands` print inside `ns`, as one text without comments and
 * counters, so that two states of a namespace compare as strings.
 */
export async function rulesSnapshot(ns: TestNamespace, commands: ReadonlyArray<readonly [string, ...string[]]> = RULE_LISTINGS): Promise<string> {
  const outputs = await Promise.all(commands.map(([command, ...args]) => ns.exec(command, args)))
  return outputs
    .map((o) =>
      o.stdout
        .split('\n')
        .filter((line) => !line.startsWith('#'))
        .map((line) => line.replace(/\[\d+:\d+\]/g, '[]').replace(/counter packets \d+ bytes \d+/g, 'counter'))
        .join('\n'),
    )
    .join('\n----\n')
}
