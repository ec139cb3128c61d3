import { describe, expect, it } from 'vitest'
import { canonicalIp, formatSocketAddress, isAmbientError, parseSocketAddress, tryCanonicalIp } from '@ambientkit/core'

describe('canonicalIp', () => {
  it.each([
    ['10.0.0.1', '10.0.0.1'],
    ['::ffff:10.0.0.1', '10.0.0.1'],
    ['::FFFF:10.0.0.1', '10.0.0.1'],
    ['::ffff:a00:1', '10.0.0.1'],
    ['2001:0db8:0:0::1', '2001:db8::1'],
    ['2001:DB8::1', '2001:db8::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['fd16:9254:7127:1337:ffff:ffff:ffff:ffff', 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff'],
  ])('%s is %s', (input, expected) => {
    expect(canonicalIp(input)).toBe(expected)
  })

  it.each(['', ' 10.0.0.1', '10.0.0.1 ', '010.0.0.1', '10.0.0', '256.0.0.1', 'fe80::1%eth0', 'example.com', '1::2::3'])(
    'rejects %j',
    (input) => {
      expect(tryCanonicalIp(input)).toBeUndefined()
      expect(() => canonicalIp(input, 'peer')).toThrow(/^peer: expected an IPv4 or IPv6 address/)
    },
  )

  // Found by fuzzing: Node writes ::/96 addresses as `::0.1.0.0`, which CIDR
  // arithmetic could not read, so evaluating a policy threw a plain Error.
  it('writes IPv4-compatible addresses (::/96) in hex groups, as RFC 5952 does', () => {
    expect(canonicalIp('::1:0')).toBe('::1:0')
    expect(canonicalIp('::1.2.3.4')).toBe('::102:304')
    expect(canonicalIp('0:0:0:0:0:0:ffff:ffff')).toBe('::ffff:ffff')
    expect(parseSocketAddress('[::102:304]:80').address).toBe('::102:304')
  })

  it('rejects non-strings with the invalid-address code', () => {
    try {
      canonicalIp(42 as unknown as string)
      expect.unreachable()
    } catch (err) {
      expect(isAmbientError(err, 'ERR_AMBIENT_INVALID_ADDRESS')).toBe(true)
    }
  })
})

describe('parseSocketAddress', () => {
  it.each([
    ['10.1.2.5:8080', '10.1.2.5', 8080, 4],
    ['[2001:db8::1]:15008', '2001:db8::1', 15008, 6],
    ['[2001:0db8:0:0::1]:1', '2001:db8::1', 1, 6],
    ['[::ffff:10.0.0.1]:65535', '10.0.0.1', 65535, 4],
  ])('%s', (text, address, port, family) => {
    expect(parseSocketAddress(text)).toEqual({ address, port, family })
  })

  it.each([
    ['', /empty/],
    ['10.0.0.1', /missing port/],
    ['10.0.0.1:', /port must be 1-65535/],
    ['10.0.0.1:0', /port must be 1-65535/],
    ['10.0.0.1:65536', /port must be 1-65535/],
    ['10.0.0.1:080', /port must be 1-65535/],
    ['10.0.0.1:+80', /port must be 1-65535/],
    ['10.0.0.1:80 ', /whitespace/],
    [' 10.0.0.1:80', /whitespace/],
    ['10.0.0.1:8\t0', /whitespace/],
    ['2001:db8::1:80', /must be in brackets/],
    ['[2001:db8::1]80', /missing ":port"/],
    ['[2001:db8::1:80', /unclosed/],
    ['[10.0.0.1]:80', /not an IPv6 address inside brackets/],
    ['[fe80::1%eth0]:80', /invalid IP address|not an IPv6/],
    ['example.com:80', /not an IPv4 address/],
    ['10.0.0.256:80', /not an IPv4 address/],
  ])('rejects %j', (text, message) => {
    expect(() => parseSocketAddress(text, ':authority')).toThrow(message)
    expect(() => parseSocketAddress(text, ':authority')).toThrow(/^:authority: /)
  })

  it('round-trips through formatSocketAddress', () => {
    for (const text of ['10.1.2.5:8080', '[2001:db8::1]:15008']) {
      expect(formatSocketAddress(parseSocketAddress(text))).toBe(text)
    }
    expect(formatSocketAddress({ address: '2001:0db8::0001', port: 80 })).toBe('[2001:db8::1]:80')
    expect(() => formatSocketAddress({ address: '10.0.0.1', port: 0 })).toThrow(/port: expected 1-65535, got 0/)
  })
})
