import { describe, expect, it } from 'vitest'
import { isAmbientError } from '@ambientkit/core'
import { IdentityErrorCode, SpiffeId, TrustDomain } from '@ambientkit/identity'

// Drawn from the SPIFFE-ID spec (§2, §2.1, §2.2, §2.3) and from the cases the
// reference implementations (go-spiffe spiffeid, java-spiffe) test.
const td255 = 'a'.repeat(255)
const valid: Array<[string, string, string]> = [
  ['spiffe://trustdomain', 'trustdomain', ''],
  ['spiffe://trustdomain/path', 'trustdomain', '/path'],
  ['spiffe://trustdomain/path/element', 'trustdomain', '/path/element'],
  ['spiffe://example.org/ns/default/sa/default', 'example.org', '/ns/default/sa/default'],
  ['spiffe://cluster.local/ns/shop/sa/api', 'cluster.local', '/ns/shop/sa/api'],
  ['spiffe://trust-domain_1.example/x', 'trust-domain_1.example', '/x'],
  ['spiffe://0123456789/seg', '0123456789', '/seg'],
  ['spiffe://td/Path/With/UPPER', 'td', '/Path/With/UPPER'],
  ['spiffe://td/a.b-c_d', 'td', '/a.b-c_d'],
  ['spiffe://td/...', 'td', '/...'],
  ['spiffe://td/.hidden', 'td', '/.hidden'],
  ['spiffe://td/..a', 'td', '/..a'],
  ['spiffe://td/a/b/c/d/e/f/g', 'td', '/a/b/c/d/e/f/g'],
  ['spiffe://td/_', 'td', '/_'],
  ['spiffe://td/-', 'td', '/-'],
  [`spiffe://${td255}/p`, td255, '/p'],
  [`spiffe://td/${'p'.repeat(2048 - 'spiffe://td/'.length)}`, 'td', `/${'p'.repeat(2048 - 'spiffe://td/'.length)}`],
]

const invalid: Array<[unknown, RegExp]> = [
  ['', /empty/],
  ['spiffe', /scheme/],
  ['spiffe:/', /scheme/],
  ['spiffe:/trustdomain/path', /scheme/],
  ['spiffe:trustdomain/path', /scheme/],
  ['SPIFFE://trustdomain/path', /scheme/],
  ['Spiffe://trustdomain/path', /scheme/],
  ['http://trustdomain/path', /scheme/],
  ['://trustdomain/path', /scheme/],
  ['trustdomain/path', /scheme/],
  ['spiffe://', /trust domain is missing/],
  ['spiffe:///path', /trust domain is missing/],
  ['spiffe://TrustDomain/path', /must be lowercase/],
  ['spiffe://trust%20domain/path', /percent-encoding/],
  ['spiffe://trustdomain:8080/path', /port/],
  ['spiffe://user@trustdomain/path', /userinfo/],
  ['spiffe://user:pass@trustdomain/path', /port|userinfo/],
  ['spiffe://trust domain/path', /trust domain characters/],
  ['spiffe://trust$domain/path', /trust domain characters/],
  ['spiffe://trustdomäin/path', /trust domain characters/],
  ['spiffe://[::1]/path', /trust domain characters/],
  ['spiffe://trustdomain?query', /query/],
  ['spiffe://trustdomain#fragment', /fragment/],
  ['spiffe://trustdomain/path?query=1', /query/],
  ['spiffe://trustdomain/path#fragment', /fragment/],
  ['spiffe://trustdomain/', /trailing slash/],
  ['spiffe://trustdomain/path/', /trailing slash/],
  ['spiffe://trustdomain//path', /empty segments/],
  ['spiffe://trustdomain/path//element', /empty segments/],
  ['spiffe://trustdomain/.', /"\." or "\.\." segments/],
  ['spiffe://trustdomain/..', /"\." or "\.\." segments/],
  ['spiffe://trustdomain/path/./element', /"\." or "\.\." segments/],
  ['spiffe://trustdomain/path/../element', /"\." or "\.\." segments/],
  ['spiffe://trustdomain/pa%74h', /percent-encoding/],
  ['spiffe://trustdomain/pa th', /path segment characters/],
  ['spiffe://trustdomain/päth', /path segment characters/],
  ['spiffe://trustdomain/path:x', /path segment characters/],
  ['spiffe://trustdomain/path\\x', /path segment characters/],
  [`spiffe://${'a'.repeat(256)}/p`, /longer than 255 bytes/],
  [`spiffe://td/${'p'.repeat(2049 - 'spiffe://td/'.length)}`, /longer than 2048 bytes/],
  [42, /must be a string/],
  [undefined, /must be a string/],
]

describe('SpiffeId.parse', () => {
  it('has a table of at least 40 cases', () => {
    expect(valid.length + invalid.length).toBeGreaterThanOrEqual(40)
  })

  it.each(valid)('accepts %s', (text, trustDomain, path) => {
    const id = SpiffeId.parse(text)
    expect(id.trustDomain.name).toBe(trustDomain)
    expect(id.path).toBe(path)
    expect(id.toString()).toBe(text)
  })

  it.each(invalid)('rejects %j', (text, rule) => {
    let error: unknown
    try {
      SpiffeId.parse(text as string)
    } catch (err) {
      error = err
    }
    expect(isAmbientError(error, IdentityErrorCode.InvalidSpiffeId)).toBe(true)
    expect((error as Error).message).toMatch(rule)
    expect(SpiffeId.tryParse(text as string)).toBeUndefined()
  })
})

describe('TrustDomain.parse', () => {
  it('accepts a name or the trust domain ID', () => {
    expect(TrustDomain.parse('example.org').name).toBe('example.org')
    expect(TrustDomain.parse('spiffe://example.org').name).toBe('example.org')
    expect(TrustDomain.parse('example.org').id().toString()).toBe('spiffe://example.org')
  })

  it.each([
    ['', /missing/],
    ['Example.org', /lowercase/],
    ['example.org:443', /port/],
    ['spiffe://example.org/path', /no path/],
    ['https://example.org', /scheme/],
  ])('rejects %j', (text, rule) => {
    expect(() => TrustDomain.parse(text)).toThrow(rule)
  })
})

describe('service account form', () => {
  it('round-trips ns/sa', () => {
    const id = SpiffeId.fromServiceAccount('cluster.local', 'shop', 'api')
    expect(id.toString()).toBe('spiffe://cluster.local/ns/shop/sa/api')
    expect(id.toServiceAccount()).toEqual({ namespace: 'shop', serviceAccount: 'api' })
    expect(id.equals(SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/api'))).toBe(true)
    expect(id.memberOf(TrustDomain.parse('cluster.local'))).toBe(true)
  })

  it('returns undefined for other paths', () => {
    for (const text of ['spiffe://td', 'spiffe://td/ns/a', 'spiffe://td/ns/a/sa/b/c', 'spiffe://td/x/a/sa/b', 'spiffe://td/ns/a/xx/b']) {
      expect(SpiffeId.parse(text).toServiceAccount()).toBeUndefined()
    }
  })

  it('rejects namespaces and service accounts that are not one valid segment', () => {
    expect(() => SpiffeId.fromServiceAccount('td', 'a/b', 'sa')).toThrow(/single path segment|empty|segment/)
    expect(() => SpiffeId.fromServiceAccount('td', '', 'sa')).toThrow(/empty segments|trailing slash/)
    expect(() => SpiffeId.fromServiceAccount('td', 'ns', '..')).toThrow(/"\." or "\.\."/)
    expect(() => SpiffeId.fromServiceAccount('td', 'ns', 'a b')).toThrow(/path segment characters/)
    expect(() => SpiffeId.fromServiceAccount('TD', 'ns', 'sa')).toThrow(/lowercase/)
  })
})
