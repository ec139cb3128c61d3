import { writeFileSync } from 'node:fs'
import { invalidArgument, isAmbientError, throwIfAborted, type AbortOptions } from '@ambientkit/core'
import type { CaptureConfig } from './config'
import { nativeError, RedirectErrorCode } from './errors'
import type { Netns } from './netns'
import {
  IPTABLES_CHAINS,
  iptablesExpected,
  iptablesJumpLine,
  nftChainHeader,
  nftExpected,
  NFT_TABLE,
  renderIptables,
  renderNftables,
} from './render'
import { checkIpv6Routing, ensureRouting, readRouting, removeRouting, undoRouting } from './routing'
import { captureRules, type CaptureFamily, type CaptureRuleSet, type CaptureStage } from './rules'

/** The two ways capture rules reach the kernel. */
export type CaptureBackend = 'nftables' | 'iptables'

/** Options of {@link applyCapture}. */
export interface ApplyCaptureOptions extends AbortOptions {
  /** `'auto'` picks nftables when `nft` works in the namespace, else iptables. Default `'auto'`. */
  backend?: CaptureBackend | 'auto'
}

/** What {@link applyCapture} did. */
export interface ApplyCaptureResult {
  backend: CaptureBackend
}

/** Options of {@link removeCapture}. */
export interface RemoveCaptureOptions extends AbortOptions {
  /**
   * The configuration capture was applied with: only its routing part
   * (connmark, mask, table) matters, to find the ip rule and route. Default `{}`.
   */
  config?: CaptureConfig
}

/** What {@link removeCapture} did. */
export interface RemoveCaptureResult {
  /** Whether anything of ours was there to remove. */
  removed: boolean
}

/** Options of {@link inspectCapture}. */
export interface InspectCaptureOptions extends AbortOptions {
  /** The configuration capture is expected to follow. Default `{}` (Istio's defaults). */
  config?: CaptureConfig
}

/** The state of capture in a namespace, compared with a configuration. */
export interface CaptureInspection {
  /** `present`: exactly as configured; `absent`: nothing of ours; `drifted`: something differs (see `differences`). */
  status: 'present' | 'absent' | 'drifted'
  /** The backends whose rules were found. */
  backends: CaptureBackend[]
  /** Each difference in words, e.g. `iptables ipv4 nat AMBIENTKIT_OUTPUT: missing rule "-A ..."`. Empty unless drifted. */
  differences: string[]
}

export const IPTABLES: Record<CaptureFamily, { save: string; restore: string }> = {
  ipv4: { save: 'iptables-save', restore: 'iptables-restore' },
  ipv6: { save: 'ip6tables-save', restore: 'ip6tables-restore' },
}

const STAGES: readonly CaptureStage[] = ['raw', 'mangle', 'nat']
const OUR_CHAINS = new Set(Object.values(IPTABLES_CHAINS))

/** One table of `iptables-save` output. */
export interface SavedTable {
  /** Builtin and user chains with their policy (`-` for user chains). */
  chains: Map<string, string>
  /** Rule lines per chain, in order. */
  rules: Map<string, string[]>
}

export function parseSave(text: string): Map<string, SavedTable> {
  const tables = new Map<string, SavedTable>()
  let current: SavedTable | undefined
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) {
      current = { chains: new Map(), rules: new Map() }
      tables.set(line.slice(1).trim(), current)
    } else if (current !== undefined && line.startsWith(':')) {
      const [name = '', policy = ''] = line.slice(1).split(' ')
      current.chains.set(name, policy)
    } else if (current !== undefined && line.startsWith('-A ')) {
      const chain = line.split(' ')[1] ?? ''
      const list = current.rules.get(chain) ?? []
      list.push(line)
      current.rules.set(chain, list)
    }
  }
  return tables
}

export function isMissingProgram(err: unknown): boolean {
  return isAmbientError(err, RedirectErrorCode.ProgramMissing)
}

// Whether nft works is a property of the machine (binary and kernel), not of one namespace: probe once.
let nftWorks: Promise<boolean> | undefined

export async function pickBackend(netns: Netns, backend: CaptureBackend | 'auto'): Promise<CaptureBackend> {
  if (backend !== 'auto') return backend
  // No signal: an aborted probe must not be remembered as "nft does not work".
  nftWorks ??= netns.nft('list tables').then(
    () => true,
    () => false,
  )
  return (await nftWorks) ? 'nftables' : 'iptables'
}

/**
 * Installs capture in `netns`: the rules of `config` (see `captureRules`)
 * and the `ip rule` + local route of source-preserving inbound.
 *
 * Atomic per backend transaction (one nft transaction, or one `iptables-restore`
 * per family) and idempotent: applying again replaces our rules and adds
 * what is missing, so it also repairs drift. Only our own nftables table /
 * iptables chains (and the jumps into them) are written; the CNI's and the
 * user's rules are never named. The configuration is validated before
 * anything touches the kernel, and so is IPv6 (on by default): a namespace
 * with IPv6 disabled is refused, for the caller to choose `{ ipv6: false }`
 * rather than have its IPv6 silently left uncaptured. It also turns on
 * {@link enableListenerHandover} in the namespace.
 *
 * @throws `ERR_AMBIENT_REDIRECT_INVALID_CONFIG` (nothing changed),
 * `ERR_AMBIENT_REDIRECT_IPV6_DISABLED` (nothing changed),
 * `ERR_AMBIENT_REDIRECT_PROGRAM_MISSING` (names the Debian package),
 * `ERR_AMBIENT_REDIRECT_COMMAND_FAILED`, `ERR_AMBIENT_REDIRECT_NETLINK`.
 */
export async function applyCapture(netns: Netns, config: CaptureConfig = {}, options: ApplyCaptureOptions = {}): Promise<ApplyCaptureResult> {
  const ruleSet = captureRules(config)
  const requested = options.backend ?? 'auto'
  if (requested !== 'auto' && requested !== 'nftables' && requested !== 'iptables') {
    throw invalidArgument('applyCapture backend', requested, '"nftables", "iptables" or "auto"')
  }
  const { signal } = options
  throwIfAborted(signal, 'applyCapture')
  checkIpv6Routing(netns, ruleSet.routing)
  enableListenerHandover(netns)
  const backend = await pickBackend(netns, requested)
  throwIfAborted(signal, 'applyCapture')
  // Rules and routing at once; when the rules are refused (a missing
  // program, a kernel without a feature) the routing this call added is
  // taken back, so the namespace is left as it was.
  const [rules, routing] = await Promise.allSettled([applyRules(netns, backend, ruleSet, signal), ensureRouting(netns, ruleSet.routing)])
  if (rules.status === 'rejected') {
    // The rules' error is the one to report; routing left by a failed undo is what a later apply reuses and remove deletes.
    if (routing.status === 'fulfilled') await undoRouting(netns, ruleSet.routing, routing.value).catch(() => undefined)
    throw rules.reason
  }
  if (routing.status === 'rejected') throw routing.reason
  return { backend }
}

const TCP_MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req'

/**
 * Sets `net.ipv4.tcp_migrate_req = 1` in `netns` (Linux 5.14+): when a
 * listener of a `SO_REUSEPORT` group closes, the connections still in its
 * accept queue (and those being established) move to another listener of
 * the group instead of being reset. That is what lets a new proxy process
 * take over a pod's listeners from an old one without a refused
 * connection. Idempotent and cheap (one write, no program run).
 *
 * @returns `false` when the kernel is older and has no such setting (the
 * hand-over then resets what the old listener had queued), else `true`.
 * @throws `ERR_AMBIENT_REDIRECT_SOCKET` when the kernel refuses the write.
 *
 * @example
 * ```ts
 * import { enableListenerHandover, openNetns } from '@ambientkit/redirect'
 *
 * // A pod captured by someone else (istio-cni): let the next agent take over its listeners.
 * await using netns = openNetns('/proc/4242/ns/net')
 * if (!enableListenerHandover(netns)) console.warn('kernel < 5.14: an upgrade resets queued connections')
 * ```
 */
export function enableListenerHandover(netns: Netns): boolean {
  return netns.runSync(() => {
    try {
      // /proc/sys/net is the namespace of the thread writing it: this one, here.
      writeFileSync(TCP_MIGRATE_REQ, '1')
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
      throw nativeError(RedirectErrorCode.Socket, `cannot set net.ipv4.tcp_migrate_req in ${netns.path}`, err, { path: netns.path })
    }
  })
}

async function applyRules(netns: Netns, backend: CaptureBackend, ruleSet: CaptureRuleSet, signal?: AbortSignal): Promise<void> {
  if (backend === 'nftables') {
    await netns.nft(renderNftables(ruleSet), { signal })
    return
  }
  // Both families to the end, so no restore is still running when this rejects.
  const results = await Promise.allSettled(ruleSet.families.map((family) => applyIptables(netns, ruleSet, family, signal)))
  for (const result of results) if (result.status === 'rejected') throw result.reason
}

async function applyIptables(netns: Netns, ruleSet: CaptureRuleSet, family: CaptureFamily, signal?: AbortSignal): Promise<void> {
  const { save, restore } = IPTABLES[family]
  // A namespace without capture, the common case, takes one program run
  // (see the 'fresh' jumps of renderIptables). Any other one fails it
  // without a change and takes the save, compare and restore below, which
  // also reports a real failure.
  try {
    await netns.exec(restore, ['--noflush'], { input: renderIptables(ruleSet, family, { jumps: 'fresh' }), signal })
    return
  } catch (err) {
    if (isMissingProgram(err)) throw err
    throwIfAborted(signal, 'applyCapture')
  }
  const saved = parseSave((await netns.exec(save, [], { signal })).stdout)
  const missing = new Set<string>()
  for (const [stage, chains] of iptablesExpected(ruleSet, family)) {
    for (const hook of chains.keys()) {
      const jump = iptablesJumpLine(hook)
      const present = saved.get(stage)?.rules.get(hook === 'prerouting' ? 'PREROUTING' : 'OUTPUT')?.includes(jump) ?? false
      if (!present) missing.add(`${stage}/${hook}`)
    }
  }
  await netns.exec(restore, ['--noflush'], { input: renderIptables(ruleSet, family, { jumps: missing }), signal })
}

/**
 * Removes everything capture added to `netns`, whatever backend or
 * configuration added it: our nftables table, our iptables chains and the
 * jumps into them, the ip rule and the local route. Tables that iptables
 * created for us and that are left empty are deleted too, so the ruleset
 * reads as before. Idempotent.
 *
 * @returns whether anything was removed.
 */
export async function removeCapture(netns: Netns, options: RemoveCaptureOptions = {}): Promise<RemoveCaptureResult> {
  const ruleSet = captureRules(options.config ?? {})
  const { signal } = options
  throwIfAborted(signal, 'removeCapture')
  const [nft, v4, v6, routing] = await Promise.all([
    hasNftTable(netns, NFT_TABLE, signal),
    savedIptables(netns, 'ipv4', signal),
    savedIptables(netns, 'ipv6', signal),
    removeRouting(netns, ruleSet.routing),
  ])
  const removed = await removeOwnRules(netns, { v4, v6, chains: OUR_CHAINS, nftTable: NFT_TABLE, nft }, signal)
  return { removed: routing || removed }
}

/**
 * Removes our iptables `chains` (and the jumps into them) from both
 * families' saved tables, then, once no jump leads out of them, our nft
 * table and what iptables-nft created only for our chains. Whether
 * anything was removed.
 */
export async function removeOwnRules(
  netns: Netns,
  own: { v4?: Map<string, SavedTable>; v6?: Map<string, SavedTable>; chains: ReadonlySet<string>; nftTable: string; nft: boolean | undefined },
  signal?: AbortSignal,
): Promise<boolean> {
  const emptied: string[] = []
  const restores: Array<Promise<unknown>> = []
  for (const [family, saved] of [['ipv4', own.v4], ['ipv6', own.v6]] as const) {
    if (saved === undefined) continue
    const removal = iptablesRemoval(saved, family, own.chains, own.nft !== undefined)
    emptied.push(...removal.nftDeletes)
    if (removal.restore !== undefined) restores.push(netns.exec(IPTABLES[family].restore, ['--noflush'], { input: removal.restore, signal }))
  }
  await Promise.all(restores)
  // After the restores: a chain can only be deleted once our jump out of it is gone.
  const script = [...(own.nft === true ? [`delete table inet ${own.nftTable}`] : []), ...emptied]
  if (script.length > 0) await netns.nft(`${script.join('\n')}\n`, { signal })
  return script.length > 0 || restores.length > 0
}

/**
 * What removing the user chains `ours` (and every jump into them from a
 * builtin chain) from one family's `iptables-save` takes: the
 * `iptables-restore --noflush` input, if any, and the nft commands that
 * then delete what iptables-nft created only for them (a table or builtin
 * chain left holding nothing), so the ruleset reads as before. With
 * `nftWorks` false (no nft program) nothing is deleted that way.
 */
function iptablesRemoval(
  saved: Map<string, SavedTable>,
  family: CaptureFamily,
  ours: ReadonlySet<string>,
  nftWorks: boolean,
): { restore: string | undefined; nftDeletes: string[] } {
  const nftDeletes: string[] = []
  const lines: string[] = []
  const nftFamily = family === 'ipv4' ? 'ip' : 'ip6'
  for (const [name, table] of saved) {
    const present = [...table.chains.keys()].filter((chain) => ours.has(chain))
    if (present.length === 0) continue
    // Builtin chains have a policy; user-defined ones have none ("-").
    const builtin = (chain: string): boolean => (table.chains.get(chain) ?? '-') !== '-'
    const jumps = [...table.rules.entries()].flatMap(([chain, rules]) => (builtin(chain) ? rules.filter((line) => ours.has(line.split(' -j ')[1] ?? '')) : []))
    const others = [...table.chains.entries()].filter(([chain, policy]) => !ours.has(chain) && policy === '-')
    const foreignRules = [...table.rules.entries()].some(([chain, rules]) => !ours.has(chain) && rules.some((line) => !jumps.includes(line)))
    const acceptOnly = [...table.chains.entries()].every(([chain, policy]) => ours.has(chain) || policy === 'ACCEPT')
    if (nftWorks && others.length === 0 && !foreignRules && acceptOnly) {
      // Nothing but ours in it: iptables made this table for us.
      nftDeletes.push(`delete table ${nftFamily} ${name}`)
      continue
    }
    lines.push(`*${name}`, ...jumps.map((line) => line.replace(/^-A /, '-D ')), ...present.flatMap((chain) => [`-F ${chain}`, `-X ${chain}`]), 'COMMIT')
    if (nftWorks) {
      // iptables-nft makes a builtin chain only when a rule needs it: one that held nothing but our jump goes too.
      for (const [chain, rules] of table.rules) {
        if (builtin(chain) && table.chains.get(chain) === 'ACCEPT' && rules.every((line) => jumps.includes(line))) {
          nftDeletes.push(`delete chain ${nftFamily} ${name} ${chain}`)
        }
      }
    }
  }
  return { restore: lines.length > 0 ? `${lines.join('\n')}\n` : undefined, nftDeletes }
}

/** Whether the nft table `inet <table>` exists; `undefined` when nft is not installed. */
export async function hasNftTable(netns: Netns, table: string, signal?: AbortSignal): Promise<boolean | undefined> {
  try {
    const stdout = await netns.nft('list tables', { signal })
    return stdout.split('\n').some((line) => line.trim() === `table inet ${table}`)
  } catch (err) {
    if (isMissingProgram(err)) return undefined
    throw err
  }
}

/** Parsed `iptables-save` of a family; `undefined` when the program is not installed. */
export async function savedIptables(netns: Netns, family: CaptureFamily, signal?: AbortSignal): Promise<Map<string, SavedTable> | undefined> {
  try {
    return parseSave((await netns.exec(IPTABLES[family].save, [], { signal })).stdout)
  } catch (err) {
    if (isMissingProgram(err)) return undefined
    throw err
  }
}

/** Chains of `nft list table inet <table>`: header and rule lines per chain. */
export function parseNftTable(text: string): Map<string, { header: string; lines: string[] }> {
  const chains = new Map<string, { header: string; lines: string[] }>()
  let current: { header: string; lines: string[] } | undefined
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    const open = /^chain (\S+) \{$/.exec(line)
    if (open !== null) {
      current = { header: '', lines: [] }
      chains.set(open[1]!, current)
    } else if (line === '}') {
      current = undefined
    } else if (current !== undefined && line !== '') {
      if (current.header === '' && line.startsWith('type ')) current.header = line
      else current.lines.push(line)
    }
  }
  return chains
}

/** Adds to `differences` each rule of `expected` missing from `found`, each unexpected one, or that they are out of order. */
export function compareLines(where: string, expected: readonly string[], found: readonly string[], differences: string[]): void {
  for (const line of expected) if (!found.includes(line)) differences.push(`${where}: missing rule "${line}"`)
  for (const line of found) if (!expected.includes(line)) differences.push(`${where}: unexpected rule "${line}"`)
  if (differences.length === 0 && expected.join('\n') !== found.join('\n')) differences.push(`${where}: rules out of order`)
}

/**
 * Compares capture in `netns` with a configuration, for an agent to
 * reconcile: `present` (exactly as configured, in one backend), `absent`
 * (nothing of ours) or `drifted` (with every difference in words; a later
 * `applyCapture` repairs it, `removeCapture` clears it).
 */
export async function inspectCapture(netns: Netns, options: InspectCaptureOptions = {}): Promise<CaptureInspection> {
  const ruleSet = captureRules(options.config ?? {})
  const { signal } = options
  throwIfAborted(signal, 'inspectCapture')
  const [nftText, v4, v6, routing] = await Promise.all([
    netns.nft(`list table inet ${NFT_TABLE}`, { signal }).catch((err: unknown) => {
      if (isMissingProgram(err) || isAmbientError(err, RedirectErrorCode.CommandFailed)) return undefined
      throw err
    }),
    savedIptables(netns, 'ipv4', signal),
    savedIptables(netns, 'ipv6', signal),
    readRouting(netns, ruleSet.routing),
  ])
  const backends: CaptureBackend[] = []
  if (nftText !== undefined) backends.push('nftables')
  const iptablesFound = [v4, v6].some((saved) => saved !== undefined && [...saved.values()].some((t) => [...t.chains.keys()].some((c) => OUR_CHAINS.has(c))))
  if (iptablesFound) backends.push('iptables')
  const routingFound = Object.values(routing.rules).some((n) => n > 0) || Object.values(routing.routes).some(Boolean)
  if (backends.length === 0 && !routingFound) return { status: 'absent', backends, differences: [] }

  const differences: string[] = []
  if (backends.length === 0) differences.push('no capture rules in either backend')
  if (backends.length === 2) differences.push('capture rules in both nftables and iptables')
  if (nftText !== undefined) diffNftables(ruleSet, nftText, differences)
  if (iptablesFound) {
    for (const [family, saved] of [['ipv4', v4], ['ipv6', v6]] as const) diffIptables(ruleSet, family, saved, differences)
  }
  for (const family of ['ipv4', 'ipv6'] as const) {
    const wanted = ruleSet.families.includes(family)
    const rules = routing.rules[family]
    const { mark, mask, table } = ruleSet.routing
    const rule = `ip rule fwmark 0x${mark.toString(16)}/0x${mask.toString(16)} lookup ${table}`
    if (wanted && rules === 0) differences.push(`${family}: missing "${rule}"`)
    if (rules > (wanted ? 1 : 0)) differences.push(`${family}: ${rules} "${rule}" rules, expected ${wanted ? 1 : 0}`)
    if (wanted && !routing.routes[family]) differences.push(`${family}: missing "local default dev lo table ${table}"`)
    if (!wanted && routing.routes[family]) differences.push(`${family}: unexpected "local default dev lo table ${table}" (IPv6 capture is off)`)
  }
  return { status: differences.length === 0 ? 'present' : 'drifted', backends, differences }
}

function diffNftables(ruleSet: CaptureRuleSet, text: string, differences: string[]): void {
  const found = parseNftTable(text)
  const expected = nftExpected(ruleSet)
  for (const [name, chain] of expected) {
    const where = `nftables inet ${NFT_TABLE} chain ${name}`
    const got = found.get(name)
    if (got === undefined) {
      differences.push(`${where}: missing chain`)
      continue
    }
    const header = nftChainHeader(chain.stage, chain.hook)
    if (got.header !== header) differences.push(`${where}: expected "${header}", found "${got.header}"`)
    const local: string[] = []
    compareLines(where, chain.lines, got.lines, local)
    differences.push(...local)
  }
  for (const name of found.keys()) if (!expected.has(name)) differences.push(`nftables inet ${NFT_TABLE}: unexpected chain ${name}`)
}

function diffIptables(ruleSet: CaptureRuleSet, family: CaptureFamily, saved: Map<string, SavedTable> | undefined, differences: string[]): void {
  if (!ruleSet.families.includes(family)) {
    for (const [name, table] of saved ?? []) {
      for (const chain of table.chains.keys()) if (OUR_CHAINS.has(chain)) differences.push(`iptables ${family} ${name}: unexpected chain ${chain} (IPv6 capture is off)`)
    }
    return
  }
  const expected = iptablesExpected(ruleSet, family)
  for (const stage of STAGES) {
    const table = saved?.get(stage)
    const chains = expected.get(stage)
    for (const chain of OUR_CHAINS) {
      const hook = chain === IPTABLES_CHAINS.prerouting ? 'prerouting' : 'output'
      const wanted = chains?.get(hook)
      const where = `iptables ${family} ${stage} ${chain}`
      const exists = table?.chains.has(chain) ?? false
      const jumps = table?.rules.get(hook === 'prerouting' ? 'PREROUTING' : 'OUTPUT')?.filter((line) => line === iptablesJumpLine(hook)).length ?? 0
      if (wanted === undefined) {
        if (exists) differences.push(`${where}: unexpected chain`)
        if (jumps > 0) differences.push(`${where}: unexpected jump`)
        continue
      }
      if (!exists) {
        differences.push(`${where}: missing chain`)
        continue
      }
      if (jumps === 0) differences.push(`${where}: missing jump "${iptablesJumpLine(hook)}"`)
      if (jumps > 1) differences.push(`${where}: ${jumps} jumps "${iptablesJumpLine(hook)}", expected 1`)
      const local: string[] = []
      compareLines(where, wanted, table?.rules.get(chain) ?? [], local)
      differences.push(...local)
    }
  }
}

