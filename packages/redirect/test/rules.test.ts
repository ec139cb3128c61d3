import { isAmbientError } from '@ambientkit/core'
import { describe, expect, it } from 'vitest'
import {
  captureRules,
  DEFAULT_CAPTURE,
  RedirectErrorCode,
  renderIptables,
  renderNftables,
  resolveCaptureConfig,
  type CaptureConfig,
} from '../src/index'

const lines = (text: string): string[] => text.trim().split('\n')

describe('captureRules with the defaults (Istio in-pod REDIRECT rules)', () => {
  const ruleSet = captureRules()

  it('uses Istio ambient ports, marks, table and probe addresses', () => {
    expect(ruleSet.config).toEqual(DEFAULT_CAPTURE)
    expect(DEFAULT_CAPTURE).toMatchObject({
      outboundPort: 15001,
      inboundPort: 15006,
      hbonePort: 15008,
      dnsPort: 15053,
      proxyMark: 0x539,
      proxyMask: 0xfff,
      connmark: 0x111,
      routeTable: 100,
      probeAddressIpv4: '169.254.7.127',
      probeAddressIpv6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
      captureDns: false,
      ipv6: true,
    })
    expect(ruleSet.families).toEqual(['ipv4', 'ipv6'])
    expect(ruleSet.routing).toEqual({ mark: 0x111, mask: 0xfff, table: 100, priority: 32764, families: ['ipv4', 'ipv6'] })
    for (const rule of ruleSet.rules) expect(rule.why.length).toBeGreaterThan(20)
  })

  it('renders IPv4 iptables-restore input: our chains, jumps first in the builtin chains, the capture rules', () => {
    expect(lines(renderIptables(ruleSet, 'ipv4'))).toEqual([
      '*mangle',
      ':AMBIENTKIT_PRERT - [0:0]',
      ':AMBIENTKIT_OUTPUT - [0:0]',
      '-I PREROUTING 1 -j AMBIENTKIT_PRERT',
      '-I OUTPUT 1 -j AMBIENTKIT_OUTPUT',
      '-A AMBIENTKIT_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff',
      '-A AMBIENTKIT_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff',
      'COMMIT',
      '*nat',
      ':AMBIENTKIT_PRERT - [0:0]',
      ':AMBIENTKIT_OUTPUT - [0:0]',
      '-I PREROUTING 1 -j AMBIENTKIT_PRERT',
      '-I OUTPUT 1 -j AMBIENTKIT_OUTPUT',
      '-A AMBIENTKIT_PRERT -s 169.254.7.127/32 -p tcp -j RETURN',
      '-A AMBIENTKIT_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006',
      '-A AMBIENTKIT_OUTPUT -d 169.254.7.127/32 -p tcp -j RETURN',
      '-A AMBIENTKIT_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j RETURN',
      '-A AMBIENTKIT_OUTPUT ! -d 127.0.0.1/32 -o lo -j RETURN',
      '-A AMBIENTKIT_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001',
      'COMMIT',
    ])
  })

  it('renders IPv6 with the IPv6 loopback and probe address', () => {
    const v6 = renderIptables(ruleSet, 'ipv6')
    expect(v6).toContain('-A AMBIENTKIT_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -j RETURN')
    expect(v6).toContain('-A AMBIENTKIT_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001')
    expect(v6).not.toContain('127.0.0.1')
  })

  it('omits the jumps that already exist when asked', () => {
    const text = renderIptables(ruleSet, 'ipv4', { jumps: new Set(['nat/output']) })
    expect(text.match(/^-I /gm)).toEqual(['-I '])
    expect(text).toContain('-I OUTPUT 1 -j AMBIENTKIT_OUTPUT\n-A AMBIENTKIT_PRERT -s')
  })

  it("creates our chains with -N for a fresh namespace ('fresh'), so the restore fails where one exists", () => {
    const text = renderIptables(ruleSet, 'ipv4', { jumps: 'fresh' })
    expect(text).not.toMatch(/^:/m)
    expect(text.match(/^-N .*/gm)).toEqual(['-N AMBIENTKIT_PRERT', '-N AMBIENTKIT_OUTPUT', '-N AMBIENTKIT_PRERT', '-N AMBIENTKIT_OUTPUT'])
    expect(text.match(/^-I .*/gm)).toEqual(lines(renderIptables(ruleSet, 'ipv4')).filter((line) => line.startsWith('-I ')))
  })

  it('renders one nft script that replaces our inet table atomically', () => {
    const text = renderNftables(ruleSet)
    const [add, del, open] = lines(text)
    expect([add, del, open]).toEqual(['add table inet ambientkit', 'delete table inet ambientkit', 'table inet ambientkit {'])
    expect(text).toContain('chain mangle-output {\n\t\ttype route hook output priority mangle; policy accept;\n\t\tct mark & 0x00000fff == 0x00000111 meta mark set ct mark')
    expect(text).toContain('chain nat-output {\n\t\ttype nat hook output priority -100; policy accept;')
    expect(text).toContain('ip daddr != 127.0.0.1 meta l4proto tcp meta mark & 0x00000fff != 0x00000539 redirect to :15001')
    expect(text).toContain('ip6 daddr != ::1 meta l4proto tcp meta mark & 0x00000fff != 0x00000539 redirect to :15001')
    expect(text).toContain('ip daddr != 127.0.0.1 tcp dport != 15008 meta mark & 0x00000fff != 0x00000539 redirect to :15006')
    expect(text).not.toMatch(/\bflush\b|ruleset/)
  })
})

describe('captureRules options', () => {
  it('DNS capture redirects UDP and TCP 53 and separates the proxy\'s DNS in a conntrack zone', () => {
    const ruleSet = captureRules({ captureDns: true, dnsConntrackZone: 7 })
    const v4 = renderIptables(ruleSet, 'ipv4')
    expect(v4).toContain('*raw\n')
    expect(v4).toContain('-A AMBIENTKIT_OUTPUT -p udp -m udp --dport 53 -m mark --mark 0x539/0xfff -j CT --zone 7')
    expect(v4).toContain('-A AMBIENTKIT_PRERT -p udp -m udp --sport 53 -m mark ! --mark 0x539/0xfff -j CT --zone 7')
    expect(v4).toContain('! -d 127.0.0.1/32 -p udp -m udp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053')
    expect(v4).toContain('! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053')
    expect(renderNftables(ruleSet)).toContain('udp dport 53 meta mark & 0x00000fff == 0x00000539 ct zone set 7')
    expect(renderIptables(captureRules(), 'ipv4')).not.toContain('15053')
  })

  it('inbound capture can be turned off, and ports and CIDRs excluded', () => {
    const ruleSet = captureRules({
      captureInbound: false,
      excludeInboundPorts: [22, 9090],
      excludeOutboundCidrs: ['10.96.0.0/12', 'FD00:0::/8', '192.168.1.7'],
    })
    const v4 = renderIptables(ruleSet, 'ipv4')
    const v6 = renderIptables(ruleSet, 'ipv6')
    expect(v4).not.toContain('15006')
    expect(v4).toContain('-A AMBIENTKIT_PRERT -p tcp -m tcp --dport 22 -j RETURN')
    expect(v4).toContain('-A AMBIENTKIT_PRERT -p tcp -m tcp --dport 9090 -j RETURN')
    expect(v4).toContain('-A AMBIENTKIT_OUTPUT -d 10.96.0.0/12 -j RETURN')
    expect(v4).toContain('-A AMBIENTKIT_OUTPUT -d 192.168.1.7/32 -j RETURN')
    expect(v6).toContain('-A AMBIENTKIT_OUTPUT -d fd00::/8 -j RETURN')
    expect(v4).not.toContain('fd00::/8')
    // Exclusions come before the catch-all redirect, or they would never match.
    expect(v4.indexOf('10.96.0.0/12')).toBeLessThan(v4.indexOf('--to-ports 15001'))
    const nft = renderNftables(ruleSet)
    expect(nft).toContain('ip daddr 10.96.0.0/12 return')
    expect(nft).toContain('ip6 daddr fd00::/8 return')
  })

  it('virtual interfaces send their TCP to the outbound port', () => {
    const ruleSet = captureRules({ virtualInterfaces: ['tap0'] })
    expect(renderIptables(ruleSet, 'ipv4')).toContain('-A AMBIENTKIT_PRERT -i tap0 -p tcp -j REDIRECT --to-ports 15001')
    expect(renderNftables(ruleSet)).toContain('iifname "tap0" meta l4proto tcp redirect to :15001')
  })

  it('with IPv6 off, renders IPv4 only', () => {
    const ruleSet = captureRules({ ipv6: false })
    expect(ruleSet.families).toEqual(['ipv4'])
    expect(() => renderIptables(ruleSet, 'ipv6')).toThrow(/rule set's families \(ipv4\)/)
    const nft = renderNftables(ruleSet)
    expect(nft).not.toContain('ip6 ')
    expect(nft).toContain('meta nfproto ipv4 meta mark & 0x00000fff == 0x00000539 ct mark set')
  })

  it('changed ports and marks flow into every rule', () => {
    const ruleSet = captureRules({ outboundPort: 25001, inboundPort: 25006, hbonePort: 25008, proxyMark: 0x1539, proxyMask: 0xffff, connmark: 0x2111 })
    const v4 = renderIptables(ruleSet, 'ipv4')
    expect(v4).toContain('--to-ports 25001')
    expect(v4).toContain('! --dport 25008 -m mark ! --mark 0x1539/0xffff -j REDIRECT --to-ports 25006')
    expect(v4).toContain('-j CONNMARK --set-xmark 0x2111/0xffff')
    expect(v4).not.toMatch(/0x539\/|0xfff\b|1500[168]/)
  })
})

describe('capture config validation', () => {
  // Found by fuzzing: ::ffff:10.0.0.0/104 was refused as "a prefix length 0-32".
  it('excludes an IPv4-mapped CIDR as the IPv4 range it maps', () => {
    const config = resolveCaptureConfig({ ipv6: false, excludeOutboundCidrs: ['::ffff:10.0.0.0/104', '::ffff:192.168.1.7'] })
    expect(config.excludeOutboundCidrs).toEqual(['10.0.0.0/8', '192.168.1.7/32'])
    expect(() => resolveCaptureConfig({ excludeOutboundCidrs: ['::ffff:0:0/95'] })).toThrow(/prefix length of 96 or more/)
  })

  const refused: Array<[string, CaptureConfig, string, unknown]> = [
    ['port 0', { outboundPort: 0 }, 'outboundPort', 0],
    ['port above 65535', { inboundPort: 65536 }, 'inboundPort', 65536],
    ['fractional port', { dnsPort: 53.5 }, 'dnsPort', 53.5],
    ['clashing ports', { inboundPort: 15001 }, 'inboundPort', 15001],
    ['mark outside its mask', { proxyMark: 0x1539 }, 'proxyMark', 0x1539],
    ['connmark outside the mask', { connmark: 0x1000 }, 'connmark', 0x1000],
    ['connmark equal to the proxy mark', { connmark: 0x539 }, 'connmark', 0x539],
    ['zero mask', { proxyMask: 0 }, 'proxyMask', 0],
    ['mask wider than 32 bits', { proxyMask: 2 ** 32 }, 'proxyMask', 2 ** 32],
    ['the main routing table', { routeTable: 254 }, 'routeTable', 254],
    ['a rule after the main table', { rulePriority: 32766 }, 'rulePriority', 32766],
    ['IPv6 probe address as IPv4', { probeAddressIpv4: 'fd00::1' }, 'probeAddressIpv4', 'fd00::1'],
    ['bad probe address', { probeAddressIpv6: 'not-an-ip' }, 'probeAddressIpv6', 'not-an-ip'],
    ['DNS capture not a boolean', { captureDns: 'yes' as unknown as boolean }, 'captureDns', 'yes'],
    ['conntrack zone 0', { dnsConntrackZone: 0 }, 'dnsConntrackZone', 0],
    ['inbound bypass not a boolean', { captureInbound: 1 as unknown as boolean }, 'captureInbound', 1],
    ['bad CIDR', { excludeOutboundCidrs: ['10.0.0.0/33'] }, 'excludeOutboundCidrs[0]', '10.0.0.0/33'],
    ['CIDR with host bits', { excludeOutboundCidrs: ['10.0.0.1/8'] }, 'excludeOutboundCidrs[0]', '10.0.0.1/8'],
    ['not a CIDR', { excludeOutboundCidrs: ['10.0.0.0/8', 'ten'] }, 'excludeOutboundCidrs[1]', 'ten'],
    ['IPv6 CIDR with IPv6 off', { ipv6: false, excludeOutboundCidrs: ['fd00::/8'] }, 'excludeOutboundCidrs[0]', 'fd00::/8'],
    ['excluded inbound port 0', { excludeInboundPorts: [0] }, 'excludeInboundPorts[0]', 0],
    ['excluding a capture listener', { excludeInboundPorts: [80, 15006] }, 'excludeInboundPorts[1]', 15006],
    ['duplicate excluded port', { excludeInboundPorts: [80, 80] }, 'excludeInboundPorts[1]', 80],
    ['IPv6 switch not a boolean', { ipv6: 'no' as unknown as boolean }, 'ipv6', 'no'],
    ['interface named lo', { virtualInterfaces: ['lo'] }, 'virtualInterfaces[0]', 'lo'],
    ['interface name too long', { virtualInterfaces: ['a-very-long-interface'] }, 'virtualInterfaces[0]', 'a-very-long-interface'],
    ['unknown option', { outbondPort: 1 } as unknown as CaptureConfig, 'outbondPort', 1],
  ]

  it.each(refused)('refuses %s, naming the option and the value', (_label, config, name, value) => {
    let error: unknown
    try {
      captureRules(config)
    } catch (err) {
      error = err
    }
    expect(isAmbientError(error, RedirectErrorCode.InvalidConfig)).toBe(true)
    const err = error as { message: string; details: Record<string, unknown> }
    expect(err.details.name).toBe(name)
    expect(err.details.value).toEqual(value)
    expect(err.message).toContain(name)
    expect(err.message).toContain(typeof value === 'string' ? JSON.stringify(value) : String(value))
  })

  it('canonicalizes CIDRs and accepts an empty config', () => {
    expect(resolveCaptureConfig({ excludeOutboundCidrs: ['FD00:0:0::/16', '10.0.0.0/8', '10.0.0.0/8'] }).excludeOutboundCidrs).toEqual([
      'fd00::/16',
      '10.0.0.0/8',
    ])
    expect(resolveCaptureConfig({})).toEqual(DEFAULT_CAPTURE)
  })
})
