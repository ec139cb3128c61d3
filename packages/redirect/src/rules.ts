import { resolveCaptureConfig, type CaptureConfig, type ResolvedCaptureConfig } from './config'

/** An IP family as the renderers name it. */
export type CaptureFamily = 'ipv4' | 'ipv6'

/** Where a rule runs: the iptables table (nftables chain priority) and the netfilter hook. */
export type CaptureStage = 'raw' | 'mangle' | 'nat'
export type CaptureHook = 'prerouting' | 'output'

/** What a matching packet gets. */
export type CaptureAction =
  /** Leave the packet alone: stop evaluating capture rules for it. */
  | { type: 'return' }
  /** nat REDIRECT to a local port. */
  | { type: 'redirect'; port: number }
  /** Set the conntrack mark bits under `mask` to `value`. */
  | { type: 'set-connmark'; value: number; mask: number }
  /** Copy the conntrack mark into the packet mark. */
  | { type: 'restore-mark' }
  /** Put the connection in a conntrack zone. */
  | { type: 'ct-zone'; zone: number }
  /** Drop the packet. */
  | { type: 'drop' }

/** One capture rule, independent of the backend. Absent matches match everything. */
export interface CaptureRule {
  stage: CaptureStage
  hook: CaptureHook
  /** Only this family; absent: both. */
  family?: CaptureFamily
  protocol?: 'tcp' | 'udp'
  source?: string
  destination?: { cidr: string; negate?: boolean }
  inInterface?: string
  outInterface?: string
  sourcePort?: number
  destinationPort?: { port: number; negate?: boolean }
  mark?: { value: number; mask: number; negate?: boolean }
  connmark?: { value: number; mask: number }
  /** Only the first packet of a connection conntrack has not seen before (`--ctstate NEW`). */
  ctStateNew?: boolean
  action: CaptureAction
  /** Why the rule exists, for people (printed by examples/print-rules, explained in docs/capture.md). */
  why: string
}

/** Policy routing for source-preserving inbound: `ip rule fwmark <mark>/<mask> lookup <table>` and a local default route in it. */
export interface CaptureRoutingSpec {
  mark: number
  mask: number
  table: number
  priority: number
  families: readonly CaptureFamily[]
}

/** Everything capture installs in a namespace, from one {@link CaptureConfig}. */
export interface CaptureRuleSet {
  readonly config: ResolvedCaptureConfig
  readonly families: readonly CaptureFamily[]
  readonly rules: readonly CaptureRule[]
  readonly routing: CaptureRoutingSpec
}

const LOOPBACK: Record<CaptureFamily, string> = { ipv4: '127.0.0.1/32', ipv6: '::1/128' }

/**
 * Builds the capture rule set for `config` (validated first; defaults are
 * Istio ambient's in-pod REDIRECT rules). Render it with `renderIptables` or
 * `renderNftables`, or install it with `applyCapture`.
 *
 * @throws `ERR_AMBIENT_REDIRECT_INVALID_CONFIG` naming the bad option.
 */
export function captureRules(config: CaptureConfig = {}): CaptureRuleSet {
  const c = resolveCaptureConfig(config)
  const families: CaptureFamily[] = c.ipv6 ? ['ipv4', 'ipv6'] : ['ipv4']
  const probe: Record<CaptureFamily, string> = { ipv4: `${c.probeAddressIpv4}/32`, ipv6: `${c.probeAddressIpv6}/128` }
  const notProxy = { value: c.proxyMark, mask: c.proxyMask, negate: true }
  const rules: CaptureRule[] = []
  const perFamily = (make: (family: CaptureFamily) => CaptureRule): void => {
    for (const family of families) rules.push(make(family))
  }

  if (c.captureDns) {
    rules.push({
      stage: 'raw',
      hook: 'output',
      protocol: 'udp',
      destinationPort: { port: 53 },
      mark: { value: c.proxyMark, mask: c.proxyMask },
      action: { type: 'ct-zone', zone: c.dnsConntrackZone },
      why: "The proxy's own upstream DNS queries get their own conntrack zone, so they never match the pod's redirected DNS flows.",
    })
    rules.push({
      stage: 'raw',
      hook: 'prerouting',
      protocol: 'udp',
      sourcePort: 53,
      mark: notProxy,
      action: { type: 'ct-zone', zone: c.dnsConntrackZone },
      why: 'Replies to those upstream queries join the same zone, so conntrack matches them to the query and not to a redirected flow.',
    })
  }

  rules.push({
    stage: 'mangle',
    hook: 'prerouting',
    mark: { value: c.proxyMark, mask: c.proxyMask },
    action: { type: 'set-connmark', value: c.connmark, mask: c.proxyMask },
    why: 'Connections the proxy opens to the app (marked, possibly with the original client as source) are remembered in conntrack.',
  })
  rules.push({
    stage: 'mangle',
    hook: 'output',
    connmark: { value: c.connmark, mask: c.proxyMask },
    action: { type: 'restore-mark' },
    why: "The app's replies on those connections get the mark back, so the ip rule routes them to the local table and they return to the proxy instead of the spoofed source.",
  })

  if (c.dropInboundUdp) {
    rules.push({
      stage: 'mangle',
      hook: 'prerouting',
      protocol: 'udp',
      inInterface: 'lo',
      action: { type: 'return' },
      why: "UDP from the pod to itself (through lo) is the pod's own: never dropped.",
    })
    rules.push({
      stage: 'mangle',
      hook: 'prerouting',
      protocol: 'udp',
      destinationPort: { port: 53 },
      action: { type: 'return' },
      why: 'DNS to the pod (a DNS server in a captured pod) still arrives.',
    })
    rules.push({
      stage: 'mangle',
      hook: 'prerouting',
      protocol: 'udp',
      ctStateNew: true,
      action: { type: 'drop' },
      why: 'Other UDP that others start towards the pod is dropped: the mesh carries only TCP, so it would reach the app without mTLS or policy. Replies to the pod\'s own UDP are not new and pass.',
    })
  }

  for (const name of c.virtualInterfaces) {
    rules.push({
      stage: 'nat',
      hook: 'prerouting',
      protocol: 'tcp',
      inInterface: name,
      action: { type: 'redirect', port: c.outboundPort },
      why: `TCP arriving from virtual interface ${name} (a VM inside the pod) is the pod's outbound traffic.`,
    })
  }
  perFamily((family) => ({
    stage: 'nat',
    hook: 'prerouting',
    family,
    protocol: 'tcp',
    source: probe[family],
    action: { type: 'return' },
    why: "Kubelet health probes arrive SNATed from the probe address and must reach the app directly, so a dead proxy doesn't fail the pod's probes.",
  }))
  for (const p of c.excludeInboundPorts) {
    rules.push({
      stage: 'nat',
      hook: 'prerouting',
      protocol: 'tcp',
      destinationPort: { port: p },
      action: { type: 'return' },
      why: `Inbound port ${p} is excluded from capture by configuration.`,
    })
  }
  if (c.captureInbound) {
    perFamily((family) => ({
      stage: 'nat',
      hook: 'prerouting',
      family,
      protocol: 'tcp',
      destination: { cidr: LOOPBACK[family], negate: true },
      destinationPort: { port: c.hbonePort, negate: true },
      mark: notProxy,
      action: { type: 'redirect', port: c.inboundPort },
      why: `Inbound TCP to the pod goes to the proxy's plaintext inbound listener, except HBONE (port ${c.hbonePort}, already mTLS) and the proxy's own marked connections.`,
    }))
  }

  perFamily((family) => ({
    stage: 'nat',
    hook: 'output',
    family,
    protocol: 'tcp',
    destination: { cidr: probe[family] },
    action: { type: 'return' },
    why: 'Replies to kubelet probes (to the probe address) leave uncaptured, like the probes came in.',
  }))
  rules.push({
    stage: 'nat',
    hook: 'output',
    protocol: 'tcp',
    mark: { value: c.connmark, mask: c.proxyMask },
    action: { type: 'return' },
    why: 'Packets of proxy-originated connections (mark restored from conntrack) are never redirected back to the proxy.',
  })
  if (c.captureDns) {
    for (const protocol of ['udp', 'tcp'] as const) {
      perFamily((family) => ({
        stage: 'nat',
        hook: 'output',
        family,
        protocol,
        destination: { cidr: LOOPBACK[family], negate: true },
        destinationPort: { port: 53 },
        mark: notProxy,
        action: { type: 'redirect', port: c.dnsPort },
        why: `The app's DNS queries over ${protocol.toUpperCase()} go to the proxy's DNS server.`,
      }))
    }
  }
  perFamily((family) => ({
    stage: 'nat',
    hook: 'output',
    family,
    destination: { cidr: LOOPBACK[family], negate: true },
    outInterface: 'lo',
    action: { type: 'return' },
    why: "Traffic to the pod's own addresses (it leaves through lo) is not outbound; inbound capture sees it on the way in.",
  }))
  for (const cidr of c.excludeOutboundCidrs) {
    rules.push({
      stage: 'nat',
      hook: 'output',
      family: cidr.includes(':') ? 'ipv6' : 'ipv4',
      destination: { cidr },
      action: { type: 'return' },
      why: `Outbound traffic to ${cidr} is excluded from capture by configuration.`,
    })
  }
  perFamily((family) => ({
    stage: 'nat',
    hook: 'output',
    family,
    protocol: 'tcp',
    destination: { cidr: LOOPBACK[family], negate: true },
    mark: notProxy,
    action: { type: 'redirect', port: c.outboundPort },
    why: "All other outbound TCP from the pod's apps goes to the proxy's outbound listener; the proxy's own marked sockets pass (no loop).",
  }))

  return Object.freeze({
    config: c,
    families: Object.freeze(families),
    rules: Object.freeze(rules),
    routing: Object.freeze({ mark: c.connmark, mask: c.proxyMask, table: c.routeTable, priority: c.rulePriority, families: Object.freeze(families) }),
  })
}

/** The rules of `ruleSet` that apply to `family`. */
export function rulesFor(ruleSet: CaptureRuleSet, family: CaptureFamily): CaptureRule[] {
  return ruleSet.rules.filter((rule) => rule.family === undefined || rule.family === family)
}
