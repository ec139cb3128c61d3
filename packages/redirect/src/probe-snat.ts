import { invalidArgument, isAmbientError, throwIfAborted, type AbortOptions } from '@ambientkit/core'
import {
  compareLines,
  hasNftTable,
  IPTABLES,
  isMissingProgram,
  parseNftTable,
  pickBackend,
  removeOwnRules,
  savedIptables,
  type CaptureBackend,
  type CaptureInspection,
  type SavedTable,
} from './capture'
import { RedirectErrorCode } from './errors'
import type { Netns } from './netns'
import {
  PROBE_IPTABLES_CHAIN,
  PROBE_IPTABLES_JUMP,
  PROBE_NFT_CHAIN,
  PROBE_NFT_CHAIN_HEADER,
  PROBE_NFT_TABLE,
  probeIptablesRuleLine,
  probeNftRuleLine,
  probeSnatRules,
  renderProbeIptables,
  renderProbeNftables,
  type ProbeSnatConfig,
  type ProbeSnatRuleSet,
} from './probe-rules'
import type { CaptureFamily } from './rules'

/** Options of {@link applyProbeSnat}. */
export interface ApplyProbeSnatOptions extends AbortOptions {
  /** `'auto'` picks nftables when `nft` works, else iptables. Default `'auto'`. */
  backend?: CaptureBackend | 'auto'
}

/** Options of {@link inspectProbeSnat}. */
export interface InspectProbeSnatOptions extends AbortOptions {
  /** The configuration the rewrite is expected to follow (its pod addresses among it). Default `{}`: no pods. */
  config?: ProbeSnatConfig
}

/** The state of the probe rewrite in a namespace: same shape as a capture inspection. */
export type ProbeSnatInspection = CaptureInspection

const OURS = new Set([PROBE_IPTABLES_CHAIN])

/**
 * Installs, in the node's network namespace, the rewrite that gives
 * kubelet probes to enrolled pods the probe source address (see
 * `probeSnatRules`), which the pods' capture rules send straight to the
 * app: probes then work whatever the inbound policy (STRICT included),
 * and whether the pod's proxy is up or not. istio-cni installs the same
 * rule on every node.
 *
 * Atomic (one nft transaction, or one `iptables-restore` per family) and
 * idempotent: applying again replaces the rules with the configuration's,
 * so the caller passes the full list of enrolled pods' addresses each
 * time, and a repeated apply also repairs drift. Only our own nftables
 * table or iptables chain (and the jump into it) is written.
 *
 * @throws `ERR_AMBIENT_REDIRECT_INVALID_CONFIG` (nothing changed),
 * `ERR_AMBIENT_REDIRECT_PROGRAM_MISSING`, `ERR_AMBIENT_REDIRECT_COMMAND_FAILED`.
 */
export async function applyProbeSnat(netns: Netns, config: ProbeSnatConfig = {}, options: ApplyProbeSnatOptions = {}): Promise<{ backend: CaptureBackend }> {
  const ruleSet = probeSnatRules(config)
  const requested = options.backend ?? 'auto'
  if (requested !== 'auto' && requested !== 'nftables' && requested !== 'iptables') {
    throw invalidArgument('applyProbeSnat backend', requested, '"nftables", "iptables" or "auto"')
  }
  const { signal } = options
  throwIfAborted(signal, 'applyProbeSnat')
  const backend = await pickBackend(netns, requested)
  throwIfAborted(signal, 'applyProbeSnat')
  if (backend === 'nftables') {
    await netns.nft(renderProbeNftables(ruleSet), { signal })
    return { backend }
  }
  // Both families to the end, so no restore is still running when this rejects.
  const results = await Promise.allSettled(
    ruleSet.families.map(async (family) => {
      const saved = await savedIptables(netns, family, signal)
      const jump = saved?.get('nat')?.rules.get('POSTROUTING')?.includes(PROBE_IPTABLES_JUMP) ?? false
      await netns.exec(IPTABLES[family].restore, ['--noflush'], { input: renderProbeIptables(ruleSet, family, { jump: !jump }), signal })
    }),
  )
  for (const result of results) if (result.status === 'rejected') throw result.reason
  return { backend }
}

/**
 * Removes the probe rewrite from `netns`, whatever backend or pod list
 * installed it: our nftables table, our iptables chain and the jump into
 * it (and a nat table iptables created only for them). Idempotent.
 *
 * @returns whether anything was removed.
 */
export async function removeProbeSnat(netns: Netns, options: AbortOptions = {}): Promise<{ removed: boolean }> {
  const { signal } = options
  throwIfAborted(signal, 'removeProbeSnat')
  const [nft, v4, v6] = await Promise.all([
    hasNftTable(netns, PROBE_NFT_TABLE, signal),
    savedIptables(netns, 'ipv4', signal),
    savedIptables(netns, 'ipv6', signal),
  ])
  return { removed: await removeOwnRules(netns, { v4, v6, chains: OURS, nftTable: PROBE_NFT_TABLE, nft }, signal) }
}

/**
 * Compares the probe rewrite in `netns` with a configuration: `present`
 * (exactly as configured, in one backend), `absent` (nothing of ours) or
 * `drifted` (every difference in words; `applyProbeSnat` repairs it).
 */
export async function inspectProbeSnat(netns: Netns, options: InspectProbeSnatOptions = {}): Promise<ProbeSnatInspection> {
  const ruleSet = probeSnatRules(options.config ?? {})
  const { signal } = options
  throwIfAborted(signal, 'inspectProbeSnat')
  const [nftText, v4, v6] = await Promise.all([
    netns.nft(`list table inet ${PROBE_NFT_TABLE}`, { signal }).catch((err: unknown) => {
      if (isMissingProgram(err) || isAmbientError(err, RedirectErrorCode.CommandFailed)) return undefined
      throw err
    }),
    savedIptables(netns, 'ipv4', signal),
    savedIptables(netns, 'ipv6', signal),
  ])
  const backends: CaptureBackend[] = []
  if (nftText !== undefined) backends.push('nftables')
  const iptablesFound = [v4, v6].some((saved) => saved?.get('nat')?.chains.has(PROBE_IPTABLES_CHAIN) === true)
  if (iptablesFound) backends.push('iptables')
  if (backends.length === 0) return { status: 'absent', backends, differences: [] }

  const differences: string[] = []
  if (backends.length === 2) differences.push('probe SNAT rules in both nftables and iptables')
  if (nftText !== undefined) diffNftables(ruleSet, nftText, differences)
  if (iptablesFound) for (const [family, saved] of [['ipv4', v4], ['ipv6', v6]] as const) diffIptables(ruleSet, family, saved, differences)
  return { status: differences.length === 0 ? 'present' : 'drifted', backends, differences }
}

function diffNftables(ruleSet: ProbeSnatRuleSet, text: string, differences: string[]): void {
  const found = parseNftTable(text)
  const where = `nftables inet ${PROBE_NFT_TABLE} chain ${PROBE_NFT_CHAIN}`
  const chain = found.get(PROBE_NFT_CHAIN)
  if (chain === undefined) differences.push(`${where}: missing chain`)
  else {
    if (chain.header !== PROBE_NFT_CHAIN_HEADER) differences.push(`${where}: expected "${PROBE_NFT_CHAIN_HEADER}", found "${chain.header}"`)
    const local: string[] = []
    compareLines(where, ruleSet.rules.map(probeNftRuleLine), chain.lines, local)
    differences.push(...local)
  }
  for (const name of found.keys()) if (name !== PROBE_NFT_CHAIN) differences.push(`nftables inet ${PROBE_NFT_TABLE}: unexpected chain ${name}`)
}

function diffIptables(ruleSet: ProbeSnatRuleSet, family: CaptureFamily, saved: Map<string, SavedTable> | undefined, differences: string[]): void {
  const nat = saved?.get('nat')
  const where = `iptables ${family} nat ${PROBE_IPTABLES_CHAIN}`
  const exists = nat?.chains.has(PROBE_IPTABLES_CHAIN) ?? false
  const jumps = nat?.rules.get('POSTROUTING')?.filter((line) => line === PROBE_IPTABLES_JUMP).length ?? 0
  if (!ruleSet.families.includes(family)) {
    if (exists) differences.push(`${where}: unexpected chain (IPv6 is off)`)
    return
  }
  if (!exists) {
    differences.push(`${where}: missing chain`)
    return
  }
  if (jumps === 0) differences.push(`${where}: missing jump "${PROBE_IPTABLES_JUMP}"`)
  if (jumps > 1) differences.push(`${where}: ${jumps} jumps "${PROBE_IPTABLES_JUMP}", expected 1`)
  const expected = ruleSet.rules.filter((rule) => rule.family === family).map(probeIptablesRuleLine)
  const local: string[] = []
  compareLines(where, expected, nat?.rules.get(PROBE_IPTABLES_CHAIN) ?? [], local)
  differences.push(...local)
}
