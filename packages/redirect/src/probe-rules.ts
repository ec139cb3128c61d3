import { AmbientError, describeValue, invalidArgument, PROBE_ADDRESS_IPV4, PROBE_ADDRESS_IPV6, tryCanonicalIp } from '@ambientkit/core'
import { RedirectErrorCode } from './errors'
import type { CaptureFamily } from './rules'

/**
 * The node-side half of kubelet probes: which connections of the node's
 * own sockets to enrolled pods get their source rewritten to the probe
 * address, which the pods' capture rules let through to the app. Defaults
 * are Istio's (istio-cni's `ISTIO_POSTRT` chain).
 */
export interface ProbeSnatConfig {
  /** Addresses of the enrolled (captured) pods, IPv4 and IPv6. Default `[]`. */
  podAddresses?: readonly string[]
  /** The IPv4 probe source, which pod capture exempts (`probeAddressIpv4` of `CaptureConfig`). Default 169.254.7.127. */
  probeAddressIpv4?: string
  /** The IPv6 probe source (`probeAddressIpv6` of `CaptureConfig`). Default fd16:9254:7127:1337:ffff:ffff:ffff:ffff. */
  probeAddressIpv6?: string
  /** Rewrite IPv6 probes too. Default `true`. */
  ipv6?: boolean
  /**
   * Only connections from sockets owned by this user id (the kubelet's).
   * Default: connections from any socket of the node (iptables'
   * `-m owner --socket-exists`), as istio-cni does: traffic the node merely
   * forwards (other pods, other nodes, load balancers) has no local socket
   * and is never rewritten, so it stays captured and authorized.
   */
  sourceUid?: number
}

/** A validated {@link ProbeSnatConfig} with every default filled in (`sourceUid` stays optional). */
export interface ResolvedProbeSnatConfig {
  readonly podAddresses: readonly string[]
  readonly probeAddressIpv4: string
  readonly probeAddressIpv6: string
  readonly ipv6: boolean
  readonly sourceUid?: number
}

/** One rewrite: TCP from a node socket to `destination` leaves with source `snatTo`. */
export interface ProbeSnatRule {
  readonly family: CaptureFamily
  /** A pod address. */
  readonly destination: string
  readonly sourceUid?: number
  readonly snatTo: string
}

/** Everything the node-side probe rewrite installs, from one {@link ProbeSnatConfig}. */
export interface ProbeSnatRuleSet {
  readonly config: ResolvedProbeSnatConfig
  readonly families: readonly CaptureFamily[]
  /** One per pod address, in the order given. */
  readonly rules: readonly ProbeSnatRule[]
}

/** The iptables chain (table nat) of the probe rewrite, jumped to from POSTROUTING. */
export const PROBE_IPTABLES_CHAIN = 'AMBIENTKIT_PROBES'
/** The nftables table (family `inet`) of the probe rewrite; apart from the pods' `ambientkit` table. */
export const PROBE_NFT_TABLE = 'ambientkit-probes'
/** Its one chain, a nat chain on the postrouting hook. */
export const PROBE_NFT_CHAIN = 'postrouting'

function invalid(name: string, value: unknown, expected: string): AmbientError {
  return new AmbientError(RedirectErrorCode.InvalidConfig, `probe SNAT config ${name}: expected ${expected}, got ${describeValue(value)}`, {
    details: { name, value },
  })
}

const KNOWN = new Set(['podAddresses', 'probeAddressIpv4', 'probeAddressIpv6', 'ipv6', 'sourceUid'])

/**
 * Validates a probe SNAT configuration and fills in defaults.
 *
 * @throws `ERR_AMBIENT_REDIRECT_INVALID_CONFIG` naming the option and the value.
 */
export function resolveProbeSnatConfig(config: ProbeSnatConfig = {}): ResolvedProbeSnatConfig {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw invalid('(config)', config, 'an object')
  for (const key of Object.keys(config)) {
    if (!KNOWN.has(key)) throw invalid(key, (config as Record<string, unknown>)[key], `a known option (${[...KNOWN].join(', ')})`)
  }
  const ipv6 = config.ipv6 ?? true
  if (typeof ipv6 !== 'boolean') throw invalid('ipv6', ipv6, 'a boolean')
  const v4 = typeof (config.probeAddressIpv4 ?? PROBE_ADDRESS_IPV4) === 'string' ? tryCanonicalIp(config.probeAddressIpv4 ?? PROBE_ADDRESS_IPV4) : undefined
  if (v4 === undefined || v4.includes(':')) throw invalid('probeAddressIpv4', config.probeAddressIpv4, 'an IPv4 address')
  const v6 = typeof (config.probeAddressIpv6 ?? PROBE_ADDRESS_IPV6) === 'string' ? tryCanonicalIp(config.probeAddressIpv6 ?? PROBE_ADDRESS_IPV6) : undefined
  if (v6 === undefined || !v6.includes(':')) throw invalid('probeAddressIpv6', config.probeAddressIpv6, 'an IPv6 address')
  const uid = config.sourceUid
  if (uid !== undefined && (typeof uid !== 'number' || !Number.isInteger(uid) || uid < 0 || uid > 0xfffffffe)) {
    throw invalid('sourceUid', uid, 'a user id 0-4294967294')
  }
  const given = config.podAddresses ?? []
  if (!Array.isArray(given)) throw invalid('podAddresses', given, 'an array of IP addresses')
  const podAddresses = given.map((address: unknown, i) => {
    const ip = typeof address === 'string' ? tryCanonicalIp(address) : undefined
    if (ip === undefined) throw invalid(`podAddresses[${i}]`, address, 'an IP address')
    if (!ipv6 && ip.includes(':')) throw invalid(`podAddresses[${i}]`, address, 'an IPv4 address (ipv6 is false)')
    return ip
  })
  return Object.freeze({
    podAddresses: Object.freeze([...new Set(podAddresses)]),
    probeAddressIpv4: v4,
    probeAddressIpv6: v6,
    ipv6,
    ...(uid === undefined ? {} : { sourceUid: uid }),
  })
}

/**
 * Builds the node's probe rewrite for `config`: per pod address, TCP
 * from a node socket (the kubelet's) to it gets the probe address as
 * source (nat POSTROUTING SNAT). Render it with `renderProbeIptables` or
 * `renderProbeNftables`, or install it with `applyProbeSnat`.
 *
 * @throws `ERR_AMBIENT_REDIRECT_INVALID_CONFIG` naming the bad option.
 */
export function probeSnatRules(config: ProbeSnatConfig = {}): ProbeSnatRuleSet {
  const c = resolveProbeSnatConfig(config)
  const families: CaptureFamily[] = c.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4']
  const rules = c.podAddresses.map((destination): ProbeSnatRule => {
    const family = destination.includes(':') ? 'ipv6' : 'ipv4'
    return Object.freeze({
      family,
      destination,
      ...(c.sourceUid === undefined ? {} : { sourceUid: c.sourceUid }),
      snatTo: family === 'ipv6' ? c.probeAddressIpv6 : c.probeAddressIpv4,
    })
  })
  return Object.freeze({ config: c, families: Object.freeze(families), rules: Object.freeze(rules) })
}

/** One rule as `iptables-save` prints it. */
export function probeIptablesRuleLine(rule: ProbeSnatRule): string {
  const owner = rule.sourceUid === undefined ? '--socket-exists' : `--uid-owner ${rule.sourceUid}`
  return `-A ${PROBE_IPTABLES_CHAIN} -d ${rule.destination}/${rule.family === 'ipv6' ? 128 : 32} -p tcp -m owner ${owner} -j SNAT --to-source ${rule.snatTo}`
}

/** The jump from POSTROUTING to our chain, as `iptables-save` prints it. */
export const PROBE_IPTABLES_JUMP = `-A POSTROUTING -j ${PROBE_IPTABLES_CHAIN}`

/**
 * Renders the rule set for one family as `iptables-restore --noflush`
 * input: our chain (declaring it flushes it, so re-applying replaces its
 * rules in one transaction), and the jump into it when `jump` is true
 * (applyProbeSnat passes false when the jump is there already).
 */
export function renderProbeIptables(ruleSet: ProbeSnatRuleSet, family: CaptureFamily, options: { jump?: boolean } = {}): string {
  if (!ruleSet.families.includes(family)) throw invalidArgument('renderProbeIptables family', family, `one of the rule set's families (${ruleSet.families.join(', ')})`)
  const out = ['*nat', `:${PROBE_IPTABLES_CHAIN} - [0:0]`]
  if (options.jump ?? true) out.push(`-I POSTROUTING 1 -j ${PROBE_IPTABLES_CHAIN}`)
  out.push(...ruleSet.rules.filter((rule) => rule.family === family).map(probeIptablesRuleLine), 'COMMIT')
  return `${out.join('\n')}\n`
}

/** The chain's declaration line, as `nft list` prints it. */
export const PROBE_NFT_CHAIN_HEADER = 'type nat hook postrouting priority srcnat; policy accept;'

/** One rule as `nft list table` prints it. */
export function probeNftRuleLine(rule: ProbeSnatRule): string {
  const ip = rule.family === 'ipv6' ? 'ip6' : 'ip'
  // skuid only matches a packet with a local socket: the full uid range is iptables' --socket-exists.
  const owner = `meta skuid ${rule.sourceUid ?? '0-4294967295'}`
  return `${ip} daddr ${rule.destination} meta l4proto tcp ${owner} snat ${ip} to ${rule.snatTo}`
}

/**
 * Renders the rule set as an `nft -f` script that replaces our table
 * atomically (added so the delete cannot fail, deleted, defined anew, in
 * one transaction). Connections already rewritten keep their conntrack
 * mapping through a replacement.
 */
export function renderProbeNftables(ruleSet: ProbeSnatRuleSet): string {
  const out = [
    `add table inet ${PROBE_NFT_TABLE}`,
    `delete table inet ${PROBE_NFT_TABLE}`,
    `table inet ${PROBE_NFT_TABLE} {`,
    `\tchain ${PROBE_NFT_CHAIN} {`,
    `\t\t${PROBE_NFT_CHAIN_HEADER}`,
    ...ruleSet.rules.map((rule) => `\t\t${probeNftRuleLine(rule)}`),
    '\t}',
    '}',
  ]
  return `${out.join('\n')}\n`
}
