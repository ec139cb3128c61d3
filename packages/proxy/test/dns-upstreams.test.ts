import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createWorkloadRegistry, type Workload } from '@ambientkit/core'
import { createDnsProxy, DnsErrorCode, type DnsProxyOptions } from '@ambientkit/proxy'
import type { Netns } from '@ambientkit/redirect'
import { nameservers, resolveUpstreams } from '../src/dns/upstreams'

describe('the upstream resolvers of the DNS proxy', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ak-dns-upstreams-'))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))
  const file = (name: string, content: string): string => {
    const path = join(dir, name)
    writeFileSync(path, content)
    return path
  }

  it("reads resolv.conf's nameservers in order, as ztunnel reads its own", () => {
    const path = file('kube', 'search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\nnameserver fd00:96::A%eth0\noptions ndots:5\n# nameserver 1.1.1.1\n')
    expect(resolveUpstreams(undefined, path)).toEqual([
      { address: '10.96.0.10', port: 53, family: 4 },
      { address: 'fd00:96::a', port: 53, family: 6 },
    ])
  })

  it('skips loopback resolvers, which a pod cannot reach, and says so when none is left', () => {
    expect(nameservers('nameserver 127.0.0.53\nnameserver 192.0.2.53\n')).toEqual(['127.0.0.53', '192.0.2.53'])
    expect(resolveUpstreams(undefined, file('mixed', 'nameserver 127.0.0.53\nnameserver 192.0.2.53\n')).map((u) => u.address)).toEqual(['192.0.2.53'])
    expect(() => resolveUpstreams(undefined, file('resolved', 'nameserver 127.0.0.53\n'))).toThrow(
      expect.objectContaining({ code: DnsErrorCode.NoUpstream, message: expect.stringMatching(/only loopback nameservers \(127\.0\.0\.53\), which a pod cannot reach; pass upstreams$/) }),
    )
    expect(() => resolveUpstreams(undefined, file('empty', 'search example.com\n'))).toThrow(expect.objectContaining({ code: DnsErrorCode.NoUpstream }))
    expect(() => resolveUpstreams(undefined, join(dir, 'missing'))).toThrow(expect.objectContaining({ code: DnsErrorCode.NoUpstream, details: { path: join(dir, 'missing') } }))
  })

  it('takes upstreams as "ip", "ip:port" or "[ipv6]:port", and refuses anything else', () => {
    expect(resolveUpstreams(['10.96.0.10', '10.96.0.11:5353', '[fd00::1]:53', 'fd00::2'], '/nonexistent')).toEqual([
      { address: '10.96.0.10', port: 53, family: 4 },
      { address: '10.96.0.11', port: 5353, family: 4 },
      { address: 'fd00::1', port: 53, family: 6 },
      { address: 'fd00::2', port: 53, family: 6 },
    ])
    expect(() => resolveUpstreams(['kube-dns.kube-system'], '/nonexistent')).toThrow(/upstreams\[0\]: expected an address "ip", "ip:port" or "\[ipv6\]:port"/)
    expect(() => resolveUpstreams([], '/nonexistent')).toThrow(/upstreams: expected a non-empty array/)
  })
})

describe('createDnsProxy options', () => {
  const workload: Workload = { uid: 'u', name: 'app', namespace: 'shop', serviceAccount: 'app', node: 'n', addresses: ['10.0.0.1'], protocol: 'HBONE', labels: {} }
  // Options are checked before the namespace is touched.
  const netns = {} as Netns
  const base: DnsProxyOptions = { workload, netns, registry: createWorkloadRegistry(), upstreams: ['10.96.0.10'] }

  it.each<[string, Partial<DnsProxyOptions>, RegExp]>([
    ['a port out of range', { port: 70000 }, /^port: expected a port 1-65535, got 70000$/],
    ['a negative TTL', { ttl: -1 }, /^ttl: expected seconds/],
    ['a zero timeout', { timeout: 0 }, /^timeout: expected an integer >= 1, got 0$/],
    ['a cluster domain that is not one', { clusterDomain: 'cluster local' }, /^clusterDomain: expected a DNS domain/],
    ['a bad search domain', { searchDomains: ['ok.example', '..'] }, /^searchDomains\[1\]: expected a DNS domain/],
    ['no registry', { registry: undefined }, /^registry: expected a WorkloadRegistry/],
  ])('refuses %s, naming the option', async (_, options, message) => {
    await expect(createDnsProxy({ ...base, ...options } as DnsProxyOptions)).rejects.toMatchObject({ code: 'ERR_AMBIENT_INVALID_ARGUMENT', message: expect.stringMatching(message) })
  })
})
