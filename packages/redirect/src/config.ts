import { AmbientError, describeValue, tryCanonicalIp } from '@ambientkit/core'
import {
  CONNMARK,
  DNS_PORT,
  HBONE_PORT,
  INBOUND_PORT,
  OUTBOUND_PORT,
  PROBE_ADDRESS_IPV4,
  PROBE_ADDRESS_IPV6,
  PROXY_MARK,
  PROXY_MASK,
  ROUTE_TABLE,
} from '@ambientkit/core'
import { RedirectErrorCode } from './errors'

/** How a pod's traffic is captured. Every option is optional; defaults are Istio ambient's. */
export interface CaptureConfig {
  /** Where outbound TCP is redirected. Default 15001. */
  outboundPort?: number
  /** Where inbound plaintext TCP is redirected. Default 15006. */
  inboundPort?: number
  /** The HBONE port, never redirected inbound. Default 15008. */
  hbonePort?: number
  /** Where DNS is redirected when `captureDns` is on. Default 15053. */
  dnsPort?: number
  /** Mark of the proxy's own sockets: their traffic bypasses capture. Default 0x539. */
  proxyMark?: number
  /** The bits of the packet and conntrack marks capture owns. Default 0xfff. */
  proxyMask?: number
  /** Conntrack mark of proxy-originated connections, restored on their replies. Default 0x111. */
  connmark?: number
  /** Routing table with the local default route (source-preserving inbound). Default 100. */
  routeTable?: number
  /** Priority of the `ip rule` sending marked replies to `routeTable`. Default 32764. */
  rulePriority?: number
  /** Kubelet probe SNAT source (IPv4), never captured. Default 169.254.7.127. */
  probeAddressIpv4?: string
  /** Kubelet probe SNAT source (IPv6), never captured. Default fd16:9254:7127:1337:ffff:ffff:ffff:ffff. */
  probeAddressIpv6?: string
  /** Redirect DNS (UDP and TCP port 53) to `dnsPort`. Default `false`. */
  captureDns?: boolean
  /** Conntrack zone separating the proxy's upstream DNS flows from the pod's. Default 1. */
  dnsConntrackZone?: number
  /** Redirect inbound plaintext TCP to `inboundPort`; `false` lets inbound bypass capture. Default `true`. */
  captureInbound?: boolean
  /**
   * Drop UDP that others start towards the pod, but DNS (port 53): the
   * mesh carries TCP only, so without this such UDP reaches the app with no
   * mTLS and no policy (as in Istio). Replies to the pod's own UDP (its DNS
   * queries included) and the pod's traffic to itself still pass. Default `false`.
   */
  dropInboundUdp?: boolean
  /** Outbound destinations never captured (CIDRs, IPv4 or IPv6). Default `[]`. */
  excludeOutboundCidrs?: readonly string[]
  /** Inbound destination ports never captured. Default `[]`. */
  excludeInboundPorts?: readonly number[]
  /** Capture IPv6 too. Default `true`. */
  ipv6?: boolean
  /** Interfaces (e.g. of a VM inside the pod) whose incoming TCP is treated as outbound. Default `[]`. */
  virtualInterfaces?: readonly string[]
}

/** A validated {@link CaptureConfig} with every default filled in. */
export type ResolvedCaptureConfig = { readonly [K in keyof CaptureConfig]-?: NonNullable<CaptureConfig[K]> }

/** The defaults of {@link CaptureConfig}: Istio ambient's in-pod capture. */
export const DEFAULT_CAPTURE: ResolvedCaptureConfig = Object.freeze({
  outboundPort: OUTBOUND_PORT,
  inboundPort: INBOUND_PORT,
  hbonePort: HBONE_PORT,
  dnsPort: DNS_PORT,
  proxyMark: PROXY_MARK,
  proxyMask: PROXY_MASK,
  connmark: CONNMARK,
  routeTable: ROUTE_TABLE,
  rulePriority: 32764,
  probeAddressIpv4: PROBE_ADDRESS_IPV4,
  probeAddressIpv6: PROBE_ADDRESS_IPV6,
  captureDns: false,
  dnsConntrackZone: 1,
  captureInbound: true,
  dropInboundUdp: false,
  excludeOutboundCidrs: Object.freeze([]) as readonly string[],
  excludeInboundPorts: Object.freeze([]) as readonly number[],
  ipv6: true,
  virtualInterfaces: Object.freeze([]) as readonly string[],
})

function invalid(name: string, value: unknown, expected: string): AmbientError {
  return new AmbientError(RedirectErrorCode.InvalidConfig, `capture config ${name}: expected ${expected}, got ${describeValue(value)}`, {
    details: { name, value },
  })
}

function port(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) throw invalid(name, value, 'a port 1-65535')
  return value
}

function uint32(name: string, value: unknown, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > 0xffffffff) {
    throw invalid(name, value, `an integer ${min}-0xffffffff`)
  }
  return value
}

function bool(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw invalid(name, value, 'a boolean')
  return value
}

function hex(value: number): string {
  return `0x${value.toString(16)}`
}

/** A CIDR in canonical form (`10.0.0.0/8`, `fd00::/8`); host bits must be zero. */
export function canonicalCidr(name: string, value: unknown): string {
  if (typeof value !== 'string') throw invalid(name, value, 'a CIDR like "10.0.0.0/8" or "fd00::/8"')
  const slash = value.indexOf('/')
  const ip = tryCanonicalIp(slash < 0 ? value : value.slice(0, slash))
  const prefixText = slash < 0 ? undefined : value.slice(slash + 1)
  if (ip === undefined || (prefixText !== undefined && !/^(0|[1-9][0-9]{0,2})$/.test(prefixText))) {
    throw invalid(name, value, 'a CIDR like "10.0.0.0/8" or "fd00::/8"')
  }
  const v6 = ip.includes(':')
  // An IPv4-mapped CIDR (::ffff:10.0.0.0/104) canonicalises to the IPv4 range it maps: its prefix counts from bit 96.
  const mapped = !v6 && value.slice(0, slash < 0 ? value.length : slash).includes(':')
  const bits = v6 ? 128 : 32
  const writtenBits = v6 || mapped ? 128 : 32
  const written = prefixText === undefined ? writtenBits : Number(prefixText)
  if (written > writtenBits) throw invalid(name, value, `a prefix length 0-${writtenBits}`)
  if (mapped && written < 96) throw invalid(name, value, 'a network address (an IPv4-mapped CIDR has a prefix length of 96 or more)')
  const prefix = mapped ? written - 96 : written
  const big = v6 ? ipv6ToBigInt(ip) : ipv4ToBigInt(ip)
  const hostMask = (1n << BigInt(bits - prefix)) - 1n
  if ((big & hostMask) !== 0n) throw invalid(name, value, 'a network address (host bits zero)')
  return `${ip}/${prefix}`
}

function ipv4ToBigInt(ip: string): bigint {
  return ip.split('.').reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n)
}

function ipv6ToBigInt(ip: string): bigint {
  const [head = '', tail = ''] = ip.split('::')
  const headParts = head === '' ? [] : head.split(':')
  const tailParts = ip.includes('::') ? (tail === '' ? [] : tail.split(':')) : []
  const expand = (parts: string[]): string[] =>
    parts.flatMap((part) => {
      if (!part.includes('.')) return [part]
      const v4 = ipv4ToBigInt(part)
      return [(v4 >> 16n).toString(16), (v4 & 0xffffn).toString(16)]
    })
  const h = expand(headParts)
  const t = expand(tailParts)
  const groups = ip.includes('::') ? [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t] : h
  return groups.reduce((acc, group) => (acc << 16n) | BigInt(parseInt(group, 16)), 0n)
}

const INTERFACE_NAME = /^[A-Za-z0-9_.:@-]{1,15}$/

/**
 * Validates a capture configuration and fills in defaults. Nothing touches
 * the kernel before this passes.
 *
 * @throws `ERR_AMBIENT_REDIRECT_INVALID_CONFIG` naming the option and the value.
 */
export function resolveCaptureConfig(config: CaptureConfig = {}): ResolvedCaptureConfig {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw invalid('(config)', config, 'an object')
  for (const key of Object.keys(config)) {
    if (!(key in DEFAULT_CAPTURE)) throw invalid(key, (config as Record<string, unknown>)[key], `a known option (${Object.keys(DEFAULT_CAPTURE).join(', ')})`)
  }
  const c = { ...DEFAULT_CAPTURE, ...Object.fromEntries(Object.entries(config).filter(([, v]) => v !== undefined)) } as Record<string, unknown>

  const ports = {
    outboundPort: port('outboundPort', c.outboundPort),
    inboundPort: port('inboundPort', c.inboundPort),
    hbonePort: port('hbonePort', c.hbonePort),
    dnsPort: port('dnsPort', c.dnsPort),
  }
  const seen = new Map<number, string>()
  for (const [name, value] of Object.entries(ports)) {
    const other = seen.get(value)
    if (other !== undefined) throw invalid(name, value, `a port different from ${other} (${value})`)
    seen.set(value, name)
  }

  const proxyMask = uint32('proxyMask', c.proxyMask, 1)
  const proxyMark = uint32('proxyMark', c.proxyMark, 1)
  if ((proxyMark & ~proxyMask) >>> 0 !== 0) throw invalid('proxyMark', proxyMark, `a mark inside proxyMask ${hex(proxyMask)}`)
  const connmark = uint32('connmark', c.connmark, 1)
  if ((connmark & ~proxyMask) >>> 0 !== 0) throw invalid('connmark', connmark, `a mark inside proxyMask ${hex(proxyMask)}`)
  if (connmark === proxyMark) throw invalid('connmark', connmark, `a mark different from proxyMark ${hex(proxyMark)}`)

  const routeTable = uint32('routeTable', c.routeTable, 1)
  if (routeTable >= 253 && routeTable <= 255) throw invalid('routeTable', routeTable, 'a table other than default (253), main (254) and local (255)')
  const rulePriority = uint32('rulePriority', c.rulePriority, 1)
  if (rulePriority >= 32766) throw invalid('rulePriority', rulePriority, 'a priority below 32766 (before the main table)')

  const probeAddressIpv4 = typeof c.probeAddressIpv4 === 'string' ? tryCanonicalIp(c.probeAddressIpv4) : undefined
  if (probeAddressIpv4 === undefined || probeAddressIpv4.includes(':')) throw invalid('probeAddressIpv4', c.probeAddressIpv4, 'an IPv4 address')
  const probeAddressIpv6 = typeof c.probeAddressIpv6 === 'string' ? tryCanonicalIp(c.probeAddressIpv6) : undefined
  if (probeAddressIpv6 === undefined || !probeAddressIpv6.includes(':')) throw invalid('probeAddressIpv6', c.probeAddressIpv6, 'an IPv6 address')

  const captureDns = bool('captureDns', c.captureDns)
  const dnsConntrackZone = c.dnsConntrackZone
  if (typeof dnsConntrackZone !== 'number' || !Number.isInteger(dnsConntrackZone) || dnsConntrackZone < 1 || dnsConntrackZone > 65535) {
    throw invalid('dnsConntrackZone', dnsConntrackZone, 'a conntrack zone 1-65535')
  }
  const captureInbound = bool('captureInbound', c.captureInbound)
  const dropInboundUdp = bool('dropInboundUdp', c.dropInboundUdp)
  const ipv6 = bool('ipv6', c.ipv6)

  if (!Array.isArray(c.excludeOutboundCidrs)) throw invalid('excludeOutboundCidrs', c.excludeOutboundCidrs, 'an array of CIDRs')
  const excludeOutboundCidrs = [...new Set(c.excludeOutboundCidrs.map((cidr: unknown, i: number) => canonicalCidr(`excludeOutboundCidrs[${i}]`, cidr)))]
  excludeOutboundCidrs.forEach((cidr, i) => {
    if (!ipv6 && cidr.includes(':')) throw invalid(`excludeOutboundCidrs[${i}]`, cidr, 'an IPv4 CIDR (ipv6 is false)')
  })

  if (!Array.isArray(c.excludeInboundPorts)) throw invalid('excludeInboundPorts', c.excludeInboundPorts, 'an array of ports')
  const excludeInboundPorts = c.excludeInboundPorts.map((p: unknown, i: number) => port(`excludeInboundPorts[${i}]`, p))
  excludeInboundPorts.forEach((p, i) => {
    if (p === ports.inboundPort || p === ports.outboundPort || p === ports.hbonePort) {
      throw invalid(`excludeInboundPorts[${i}]`, p, 'a port other than the capture listeners (outboundPort, inboundPort, hbonePort)')
    }
    if (excludeInboundPorts.indexOf(p) !== i) throw invalid(`excludeInboundPorts[${i}]`, p, 'each port once')
  })

  if (!Array.isArray(c.virtualInterfaces)) throw invalid('virtualInterfaces', c.virtualInterfaces, 'an array of interface names')
  const virtualInterfaces = c.virtualInterfaces.map((name: unknown, i: number) => {
    if (typeof name !== 'string' || !INTERFACE_NAME.test(name) || name === 'lo') {
      throw invalid(`virtualInterfaces[${i}]`, name, 'an interface name (1-15 characters, not "lo")')
    }
    return name
  })
  if (new Set(virtualInterfaces).size !== virtualInterfaces.length) throw invalid('virtualInterfaces', virtualInterfaces, 'each interface once')

  return Object.freeze({
    ...ports,
    proxyMark,
    proxyMask,
    connmark,
    routeTable,
    rulePriority,
    probeAddressIpv4,
    probeAddressIpv6,
    captureDns,
    dnsConntrackZone,
    captureInbound,
    dropInboundUdp,
    excludeOutboundCidrs: Object.freeze(excludeOutboundCidrs),
    excludeInboundPorts: Object.freeze(excludeInboundPorts),
    ipv6,
    virtualInterfaces: Object.freeze(virtualInterfaces),
  })
}
