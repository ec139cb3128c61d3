import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { RedirectErrorCode, captureRules, renderIptables, renderNftables, resolveCaptureConfig, type CaptureConfig } from '@ambientkit/redirect'
import { checkProperty, fuzzTimeout, parseOrRefuse } from '../../../test/support/fuzz'
import { canonicalFamily, cidrArb, ipv4Arb, ipv6Arb, ipValueOf, portArb } from '../../../test/support/fuzz-net'

// Capture configurations: valid ones built from the documented options and
// their constraints, then corrupted; rendered to iptables and nft text.

const CODES = [RedirectErrorCode.InvalidConfig]

const validConfig: fc.Arbitrary<CaptureConfig> = fc
  .record({
    ports: fc.uniqueArray(portArb, { minLength: 4, maxLength: 4 }),
    // Room for two different marks.
    mask: fc.integer({ min: 3, max: 0xffffffff }).filter((m) => (m & (m - 1)) !== 0),
    markBits: fc.tuple(fc.nat(), fc.nat()),
    routeTable: fc.integer({ min: 1, max: 0xffffffff }).filter((t) => t < 253 || t > 255),
    rulePriority: fc.integer({ min: 1, max: 32765 }),
    probe4: ipv4Arb,
    probe6: ipv6Arb.filter((ip) => canonicalFamily(ip).family === 6),
    captureDns: fc.boolean(),
    dnsConntrackZone: fc.integer({ min: 1, max: 65535 }),
    captureInbound: fc.boolean(),
    ipv6: fc.boolean(),
    cidrs: fc.array(cidrArb, { maxLength: 4 }),
    excluded: fc.uniqueArray(portArb, { maxLength: 4 }),
    interfaces: fc.uniqueArray(fc.string({ unit: fc.constantFrom(...'abcXYZ019_.:@-'), minLength: 1, maxLength: 15 }).filter((n) => n !== 'lo'), { maxLength: 3 }),
  })
  .map((r) => {
    // Two different non-zero marks inside the mask.
    const bits = [...Array(32).keys()].filter((b) => (r.mask >>> b) & 1)
    const proxyMark = 2 ** bits[r.markBits[0] % bits.length]!
    const others = bits.filter((b) => 2 ** b !== proxyMark)
    const connmark = 2 ** others[r.markBits[1] % others.length]!
    const [outboundPort, inboundPort, hbonePort, dnsPort] = r.ports as [number, number, number, number]
    return {
      outboundPort, inboundPort, hbonePort, dnsPort,
      proxyMask: r.mask, proxyMark, connmark,
      routeTable: r.routeTable, rulePriority: r.rulePriority,
      probeAddressIpv4: r.probe4.text, probeAddressIpv6: r.probe6.text,
      captureDns: r.captureDns, dnsConntrackZone: r.dnsConntrackZone, captureInbound: r.captureInbound, ipv6: r.ipv6,
      // Without IPv6 capture only IPv4 ranges (mapped ones included) can be excluded.
      excludeOutboundCidrs: r.cidrs.map((c) => c.text).filter((c) => r.ipv6 || expectedCidr(c).family === 4),
      excludeInboundPorts: r.excluded.filter((p) => p !== outboundPort && p !== inboundPort && p !== hbonePort),
      virtualInterfaces: r.interfaces,
    }
  })

/** The canonical CIDR text the config must hold for a generated CIDR: IPv4-mapped ranges as the IPv4 range they map. */
function expectedCidr(text: string): { family: 4 | 6; network: bigint; prefix: number } {
  const [ip, prefix] = text.split('/') as [string, string]
  const value = ipValueOf(ip)
  const family: 4 | 6 = ip.includes(':') ? 6 : 4
  const canonical = canonicalFamily({ text: ip, family, value })
  const mapped = family === 6 && canonical.family === 4
  return { family: canonical.family, network: canonical.value, prefix: mapped ? Number(prefix) - 96 : Number(prefix) }
}

describe('capture config fuzzing', () => {
  it('accepts every configuration the options allow, canonically and idempotently, and renders it', async () => {
    await checkProperty('redirect: resolveCaptureConfig (valid)', fc.property(validConfig, (config) => {
      const result = parseOrRefuse(CODES, () => resolveCaptureConfig(config))
      if (!result.ok) throw new Error(`refused a valid config: ${JSON.stringify(config)}`)
      expect(resolveCaptureConfig(result.value)).toEqual(result.value)
      const got = result.value.excludeOutboundCidrs.map((c) => expectedCidr(c))
      const want = [...new Map((config.excludeOutboundCidrs ?? []).map((c) => expectedCidr(c)).map((c) => [`${c.family}/${c.network}/${c.prefix}`, c])).values()]
      expect(got).toEqual(want)
      const rules = captureRules(config)
      renderIptables(rules, 'ipv4')
      if (result.value.ipv6) renderIptables(rules, 'ipv6')
      renderNftables(rules)
    }), 500)
  }, fuzzTimeout(30_000))

  it('refuses corrupted configurations with ERR_AMBIENT_REDIRECT_INVALID_CONFIG only', async () => {
    const corrupted = fc.oneof(
      fc.tuple(validConfig, fc.nat(), fc.anything({ maxDepth: 1 })).map(([config, pick, junk]) => {
        const keys = Object.keys(config)
        return { ...config, [keys[pick % keys.length]!]: junk }
      }),
      fc.tuple(validConfig, fc.string({ maxLength: 20 })).map(([config, cidr]) => ({ ...config, excludeOutboundCidrs: [cidr] })),
      fc.tuple(validConfig, fc.string({ maxLength: 8 }), fc.anything()).map(([config, key, value]) => ({ ...config, [key]: value })),
      fc.anything(),
    )
    await checkProperty('redirect: resolveCaptureConfig (corrupted)', fc.property(corrupted, (config) => {
      parseOrRefuse(CODES, () => resolveCaptureConfig(config as CaptureConfig))
    }), 1000)
  }, fuzzTimeout(30_000))
})

