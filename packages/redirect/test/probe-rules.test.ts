import { isAmbientError } from '@ambientkit/core'
import { describe, expect, it } from 'vitest'
import { probeSnatRules, RedirectErrorCode, renderProbeIptables, renderProbeNftables, type ProbeSnatConfig } from '../src/index'

const lines = (text: string): string[] => text.trim().split('\n')

describe('probeSnatRules (the node-side rewrite of kubelet probes, as istio-cni installs it)', () => {
  const ruleSet = probeSnatRules({ podAddresses: ['10.1.0.5', 'FD00::0005', '10.1.0.5', '10.1.0.6'] })

  it("rewrites TCP from the node's own sockets to each pod address, once per address, to Istio's probe addresses", () => {
    expect(ruleSet.config).toEqual({
      podAddresses: ['10.1.0.5', 'fd00::5', '10.1.0.6'],
      probeAddressIpv4: '169.254.7.127',
      probeAddressIpv6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
      ipv6: true,
    })
    expect(ruleSet.rules).toEqual([
      { family: 'ipv4', destination: '10.1.0.5', snatTo: '169.254.7.127' },
      { family: 'ipv6', destination: 'fd00::5', snatTo: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff' },
      { family: 'ipv4', destination: '10.1.0.6', snatTo: '169.254.7.127' },
    ])
  })

  it('renders iptables-restore input per family: our nat chain, the jump first in POSTROUTING, a SNAT per address', () => {
    expect(lines(renderProbeIptables(ruleSet, 'ipv4'))).toEqual([
      '*nat',
      ':AMBIENTKIT_PROBES - [0:0]',
      '-I POSTROUTING 1 -j AMBIENTKIT_PROBES',
      '-A AMBIENTKIT_PROBES -d 10.1.0.5/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127',
      '-A AMBIENTKIT_PROBES -d 10.1.0.6/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127',
      'COMMIT',
    ])
    expect(lines(renderProbeIptables(ruleSet, 'ipv6', { jump: false }))).toEqual([
      '*nat',
      ':AMBIENTKIT_PROBES - [0:0]',
      '-A AMBIENTKIT_PROBES -d fd00::5/128 -p tcp -m owner --socket-exists -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
      'COMMIT',
    ])
  })

  it('renders one nft transaction replacing our own table; skuid over every uid stands for "a local socket"', () => {
    expect(lines(renderProbeNftables(ruleSet))).toEqual([
      'add table inet ambientkit-probes',
      'delete table inet ambientkit-probes',
      'table inet ambientkit-probes {',
      '\tchain postrouting {',
      '\t\ttype nat hook postrouting priority srcnat; policy accept;',
      '\t\tip daddr 10.1.0.5 meta l4proto tcp meta skuid 0-4294967295 snat ip to 169.254.7.127',
      '\t\tip6 daddr fd00::5 meta l4proto tcp meta skuid 0-4294967295 snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
      '\t\tip daddr 10.1.0.6 meta l4proto tcp meta skuid 0-4294967295 snat ip to 169.254.7.127',
      '\t}',
      '}',
    ])
  })

  it("matches only the kubelet's user when sourceUid is given, with custom probe addresses", () => {
    const custom = probeSnatRules({ podAddresses: ['10.1.0.5'], sourceUid: 0, probeAddressIpv4: '169.254.9.9', ipv6: false })
    expect(custom.families).toEqual(['ipv4'])
    expect(lines(renderProbeIptables(custom, 'ipv4'))[3]).toBe('-A AMBIENTKIT_PROBES -d 10.1.0.5/32 -p tcp -m owner --uid-owner 0 -j SNAT --to-source 169.254.9.9')
    expect(lines(renderProbeNftables(custom))[5]).toBe('\t\tip daddr 10.1.0.5 meta l4proto tcp meta skuid 0 snat ip to 169.254.9.9')
    expect(() => renderProbeIptables(custom, 'ipv6')).toThrow(/renderProbeIptables family: expected one of the rule set's families \(ipv4\)/)
  })

  it('with no pods, still owns its chain, so applying it removes every earlier rewrite', () => {
    expect(lines(renderProbeIptables(probeSnatRules(), 'ipv4'))).toEqual(['*nat', ':AMBIENTKIT_PROBES - [0:0]', '-I POSTROUTING 1 -j AMBIENTKIT_PROBES', 'COMMIT'])
  })

  it.each<[string, ProbeSnatConfig, string]>([
    ['an address that is not one', { podAddresses: ['10.1.0.300'] }, 'podAddresses[0]'],
    ['an IPv6 pod with IPv6 off', { podAddresses: ['fd00::5'], ipv6: false }, 'podAddresses[0]'],
    ['an IPv6 IPv4 probe address', { probeAddressIpv4: 'fd00::1' }, 'probeAddressIpv4'],
    ['an IPv4 IPv6 probe address', { probeAddressIpv6: '10.0.0.1' }, 'probeAddressIpv6'],
    ['a negative uid', { sourceUid: -1 }, 'sourceUid'],
    ['an unknown option', { podAddress: ['10.1.0.5'] } as unknown as ProbeSnatConfig, 'podAddress'],
  ])('refuses %s, naming the option', (_, config, name) => {
    try {
      probeSnatRules(config)
      expect.unreachable()
    } catch (err) {
      expect(isAmbientError(err, RedirectErrorCode.InvalidConfig)).toBe(true)
      expect((err as { details: { name: string } }).details.name).toBe(name)
      expect((err as Error).message).toMatch(new RegExp(`^probe SNAT config ${name.replace(/[[\]]/g, '\\$&')}: expected `))
    }
  })
})
