import { invalidArgument } from '@ambientkit/core'
import { rulesFor, type CaptureFamily, type CaptureHook, type CaptureRule, type CaptureRuleSet, type CaptureStage } from './rules'

/** The iptables chains capture owns, one per hook in each table it uses. */
export const IPTABLES_CHAINS: Readonly<Record<CaptureHook, string>> = Object.freeze({
  prerouting: 'AMBIENTKIT_PRERT',
  output: 'AMBIENTKIT_OUTPUT',
})

/** The nftables table capture owns (family `inet`: IPv4 and IPv6 in one table). */
export const NFT_TABLE = 'ambientkit'

const STAGES: readonly CaptureStage[] = ['raw', 'mangle', 'nat']
const HOOKS: readonly CaptureHook[] = ['prerouting', 'output']
const BUILTIN: Record<CaptureHook, string> = { prerouting: 'PREROUTING', output: 'OUTPUT' }

const hex = (value: number): string => `0x${value.toString(16)}`

/** Options of {@link renderIptables}. */
export interface RenderIptablesOptions {
  /**
   * Which jump rules from the builtin chains to our chains to insert:
   * `'all'`, or the `table/HOOK` pairs that are missing (applyCapture passes
   * those so re-applying never duplicates a jump). Default `'all'`.
   *
   * `'fresh'` inserts every jump too, but creates our chains with `-N`
   * instead of declaring them: the restore then fails, changing nothing in
   * that table, when one of them exists already. A jump cannot lead to a
   * chain that does not exist, so when it succeeds no jump was duplicated:
   * one program run captures a namespace that had no capture yet.
   */
  jumps?: 'all' | 'fresh' | ReadonlySet<string>
}

/** One rule as `iptables-save` prints it (the renderer writes the canonical form so inspection compares text). */
export function iptablesRuleLine(rule: CaptureRule): string {
  const parts = [`-A ${IPTABLES_CHAINS[rule.hook]}`]
  if (rule.source !== undefined) parts.push(`-s ${rule.source}`)
  if (rule.destination !== undefined) parts.push(`${rule.destination.negate === true ? '! ' : ''}-d ${rule.destination.cidr}`)
  if (rule.inInterface !== undefined) parts.push(`-i ${rule.inInterface}`)
  if (rule.outInterface !== undefined) parts.push(`-o ${rule.outInterface}`)
  if (rule.protocol !== undefined) parts.push(`-p ${rule.protocol}`)
  if (rule.sourcePort !== undefined || rule.destinationPort !== undefined) {
    if (rule.protocol === undefined) throw invalidArgument('rule.protocol', rule.protocol, "'tcp' or 'udp': a port match needs a protocol")
    parts.push(`-m ${rule.protocol}`)
    if (rule.sourcePort !== undefined) parts.push(`--sport ${rule.sourcePort}`)
    if (rule.destinationPort !== undefined) parts.push(`${rule.destinationPort.negate === true ? '! ' : ''}--dport ${rule.destinationPort.port}`)
  }
  if (rule.ctStateNew === true) parts.push('-m conntrack --ctstate NEW')
  if (rule.mark !== undefined) parts.push(`-m mark ${rule.mark.negate === true ? '! ' : ''}--mark ${hex(rule.mark.value)}/${hex(rule.mark.mask)}`)
  if (rule.connmark !== undefined) parts.push(`-m connmark --mark ${hex(rule.connmark.value)}/${hex(rule.connmark.mask)}`)
  const action = rule.action
  switch (action.type) {
    case 'return':
      parts.push('-j RETURN')
      break
    case 'redirect':
      parts.push(`-j REDIRECT --to-ports ${action.port}`)
      break
    case 'set-connmark':
      parts.push(`-j CONNMARK --set-xmark ${hex(action.value)}/${hex(action.mask)}`)
      break
    case 'restore-mark':
      parts.push('-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff')
      break
    case 'ct-zone':
      parts.push(`-j CT --zone ${action.zone}`)
      break
    case 'drop':
      parts.push('-j DROP')
      break
  }
  return parts.join(' ')
}

/** The jump rule from a builtin chain to ours, as `iptables-save` prints it. */
export function iptablesJumpLine(hook: CaptureHook): string {
  return `-A ${BUILTIN[hook]} -j ${IPTABLES_CHAINS[hook]}`
}

/** Per table, the rule lines of our chains (as `iptables-save` prints them), in order. */
export function iptablesExpected(ruleSet: CaptureRuleSet, family: CaptureFamily): Map<CaptureStage, Map<CaptureHook, string[]>> {
  const tables = new Map<CaptureStage, Map<CaptureHook, string[]>>()
  for (const rule of rulesFor(ruleSet, family)) {
    let chains = tables.get(rule.stage)
    if (chains === undefined) tables.set(rule.stage, (chains = new Map()))
    let lines = chains.get(rule.hook)
    if (lines === undefined) chains.set(rule.hook, (lines = []))
    lines.push(iptablesRuleLine(rule))
  }
  return new Map(STAGES.filter((s) => tables.has(s)).map((s) => [s, new Map(HOOKS.filter((h) => tables.get(s)!.has(h)).map((h) => [h, tables.get(s)!.get(h)!]))]))
}

/**
 * Renders the rule set for one family as `iptables-restore --noflush`
 * input: our own chains (declaring them flushes them, so re-applying
 * replaces their rules in one transaction) and jumps to them inserted first
 * in the builtin chains. Rules of other owners are never named.
 */
export function renderIptables(ruleSet: CaptureRuleSet, family: CaptureFamily, options: RenderIptablesOptions = {}): string {
  if (family !== 'ipv4' && family !== 'ipv6') throw invalidArgument('renderIptables family', family, '"ipv4" or "ipv6"')
  if (!ruleSet.families.includes(family)) throw invalidArgument('renderIptables family', family, `one of the rule set's families (${ruleSet.families.join(', ')})`)
  const jumps = options.jumps ?? 'all'
  const out: string[] = []
  for (const [stage, chains] of iptablesExpected(ruleSet, family)) {
    out.push(`*${stage}`)
    for (const hook of chains.keys()) out.push(jumps === 'fresh' ? `-N ${IPTABLES_CHAINS[hook]}` : `:${IPTABLES_CHAINS[hook]} - [0:0]`)
    for (const hook of chains.keys()) {
      if (jumps === 'all' || jumps === 'fresh' || jumps.has(`${stage}/${hook}`)) out.push(`-I ${BUILTIN[hook]} 1 -j ${IPTABLES_CHAINS[hook]}`)
    }
    for (const lines of chains.values()) out.push(...lines)
    out.push('COMMIT')
  }
  return `${out.join('\n')}\n`
}

const NFT_PRIORITY: Record<CaptureStage, string> = { raw: 'raw', mangle: 'mangle', nat: 'dstnat' }

/** The name of our nftables chain for a stage and hook (`nat-output`...). */
export function nftChainName(stage: CaptureStage, hook: CaptureHook): string {
  return `${stage}-${hook}`
}

/** The base-chain declaration line of a chain, as `nft list` prints it. */
export function nftChainHeader(stage: CaptureStage, hook: CaptureHook): string {
  // Output mangling must be a route chain: a changed mark then re-routes the packet, as iptables' mangle OUTPUT does.
  const type = stage === 'nat' ? 'nat' : stage === 'mangle' && hook === 'output' ? 'route' : 'filter'
  const priority = stage === 'nat' && hook === 'output' ? '-100' : NFT_PRIORITY[stage]
  return `type ${type} hook ${hook} priority ${priority}; policy accept;`
}

function nftAddress(family: CaptureFamily | undefined, cidr: string): { prefix: string; value: string } {
  const v6 = cidr.includes(':')
  if (family !== undefined && (family === 'ipv6') !== v6) throw invalidArgument('rule address', cidr, `an ${family} address in an ${family} rule`)
  const full = v6 ? cidr.endsWith('/128') : cidr.endsWith('/32')
  return { prefix: v6 ? 'ip6' : 'ip', value: full ? cidr.slice(0, cidr.lastIndexOf('/')) : cidr }
}

const hex8 = (value: number): string => `0x${value.toString(16).padStart(8, '0')}`

/** One rule as `nft list table` prints it. */
export function nftRuleLine(rule: CaptureRule, onlyIpv4: boolean): string {
  const parts: string[] = []
  const addressed = rule.source !== undefined || rule.destination !== undefined
  if (onlyIpv4 && rule.family === undefined && !addressed) parts.push('meta nfproto ipv4')
  if (rule.source !== undefined) {
    const a = nftAddress(rule.family, rule.source)
    parts.push(`${a.prefix} saddr ${a.value}`)
  }
  if (rule.destination !== undefined) {
    const a = nftAddress(rule.family, rule.destination.cidr)
    parts.push(`${a.prefix} daddr ${rule.destination.negate === true ? '!= ' : ''}${a.value}`)
  }
  if (rule.inInterface !== undefined) parts.push(`iifname "${rule.inInterface}"`)
  if (rule.outInterface !== undefined) parts.push(`oifname "${rule.outInterface}"`)
  const ports = rule.sourcePort !== undefined || rule.destinationPort !== undefined
  if (rule.protocol !== undefined && !ports) parts.push(`meta l4proto ${rule.protocol}`)
  if (rule.sourcePort !== undefined) parts.push(`${rule.protocol} sport ${rule.sourcePort}`)
  if (rule.destinationPort !== undefined) {
    parts.push(`${rule.protocol} dport ${rule.destinationPort.negate === true ? '!= ' : ''}${rule.destinationPort.port}`)
  }
  if (rule.ctStateNew === true) parts.push('ct state new')
  if (rule.mark !== undefined) {
    parts.push(`meta mark & ${hex8(rule.mark.mask)} ${rule.mark.negate === true ? '!=' : '=='} ${hex8(rule.mark.value)}`)
  }
  if (rule.connmark !== undefined) parts.push(`ct mark & ${hex8(rule.connmark.mask)} == ${hex8(rule.connmark.value)}`)
  const action = rule.action
  switch (action.type) {
    case 'return':
      parts.push('return')
      break
    case 'redirect':
      parts.push(`redirect to :${action.port}`)
      break
    case 'set-connmark':
      // nft prints the kept bits as (~mask | value): the same result, and the form inspection compares.
      parts.push(`ct mark set ct mark & ${hex8((~action.mask | action.value) >>> 0)} | ${hex8(action.value)}`)
      break
    case 'restore-mark':
      parts.push('meta mark set ct mark')
      break
    case 'ct-zone':
      parts.push(`ct zone set ${action.zone}`)
      break
    case 'drop':
      parts.push('drop')
      break
  }
  return parts.join(' ')
}

/** Per chain (`nat-output`...), the rule lines of our table as `nft list table` prints them, in order. */
export function nftExpected(ruleSet: CaptureRuleSet): Map<string, { stage: CaptureStage; hook: CaptureHook; lines: string[] }> {
  const onlyIpv4 = !ruleSet.families.includes('ipv6')
  const chains = new Map<string, { stage: CaptureStage; hook: CaptureHook; lines: string[] }>()
  for (const stage of STAGES) {
    for (const hook of HOOKS) {
      const lines = ruleSet.rules.filter((r) => r.stage === stage && r.hook === hook).map((r) => nftRuleLine(r, onlyIpv4))
      if (lines.length > 0) chains.set(nftChainName(stage, hook), { stage, hook, lines })
    }
  }
  return chains
}

/**
 * Renders the rule set as an `nft -f` script that replaces our `inet` table
 * atomically: the table is added (so the delete cannot fail), deleted, and
 * defined anew, all in one transaction. Nothing outside the table is named.
 */
export function renderNftables(ruleSet: CaptureRuleSet): string {
  const out = [`add table inet ${NFT_TABLE}`, `delete table inet ${NFT_TABLE}`, `table inet ${NFT_TABLE} {`]
  for (const [name, chain] of nftExpected(ruleSet)) {
    out.push(`\tchain ${name} {`, `\t\t${nftChainHeader(chain.stage, chain.hook)}`, ...chain.lines.map((line) => `\t\t${line}`), '\t}')
  }
  out.push('}')
  return `${out.join('\n')}\n`
}
