import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { IdentityErrorCode, SpiffeId, TrustDomain } from '@ambientkit/identity'
import { checkProperty, fuzzTimeout, parseOrRefuse } from '../../../test/support/fuzz'

// SPIFFE IDs from the grammar of the SPIFFE-ID spec (§2, §2.1, §2.2, §2.3),
// and anything else, against a reference written from the same spec.

const CODES = [IdentityErrorCode.InvalidSpiffeId]
const TD_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789.-_'
const PATH_CHARS = `${TD_CHARS}ABCDEFGHIJKLMNOPQRSTUVWXYZ`
// Characters every rule of the spec has an opinion on, and some it has none on.
const HOSTILE_CHARS = [...PATH_CHARS, '/', ':', '@', '%', '?', '#', '[', ']', ' ', '\t', '\0', '+', '~', '!', '$', '&', "'", '=', '\\', 'é', 'İ', '\u{1F600}', 'K']

/** The spec's grammar, written independently of the parser under test. */
function specAllows(text: string): boolean {
  const match = /^spiffe:\/\/([a-z0-9._-]+)((?:\/[a-zA-Z0-9._-]+)*)$/.exec(text)
  if (match === null) return false
  if (match[1]!.length > 255 || Buffer.byteLength(text) > 2048) return false
  return match[2]!.split('/').slice(1).every((segment) => segment !== '.' && segment !== '..')
}

const trustDomainName = fc.oneof(
  fc.string({ unit: fc.constantFrom(...TD_CHARS), minLength: 1, maxLength: 40 }),
  // Around the 255-byte limit.
  fc.integer({ min: 250, max: 260 }).map((n) => 'a'.repeat(n)),
)
const segment = fc
  .string({ unit: fc.constantFrom(...PATH_CHARS), minLength: 1, maxLength: 24 })
  .filter((s) => s !== '.' && s !== '..')
const path = fc.array(segment, { maxLength: 8 }).map((segments) => segments.map((s) => `/${s}`).join(''))
const longPath = fc.integer({ min: 2030, max: 2060 }).map((n) => `/${'p'.repeat(n - 'spiffe://td/'.length)}`)

/** Valid by construction (except where the 255 and 2048 byte limits are crossed, which `specAllows` tells). */
const grammarId = fc.oneof(
  fc.tuple(trustDomainName, path),
  fc.tuple(fc.constant('td'), longPath),
).map(([td, p]) => ({ td, path: p, text: `spiffe://${td}${p}` }))

/** A grammar ID with a few characters inserted, replaced or removed: most break one rule. */
const mutatedId = fc
  .tuple(
    grammarId,
    fc.array(fc.tuple(fc.nat(), fc.constantFrom('insert', 'replace', 'delete'), fc.constantFrom(...HOSTILE_CHARS)), { minLength: 1, maxLength: 4 }),
  )
  .map(([id, edits]) => {
    let text = id.text
    for (const [at, kind, char] of edits) {
      const i = at % (text.length + 1)
      if (kind === 'insert') text = text.slice(0, i) + char + text.slice(i)
      else if (kind === 'replace') text = text.slice(0, i) + char + text.slice(i + 1)
      else text = text.slice(0, i) + text.slice(i + 1)
    }
    return text
  })

const anyText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.string({ unit: fc.constantFrom(...HOSTILE_CHARS), maxLength: 64 }).map((s) => `spiffe://${s}`),
  mutatedId,
  fc.constantFrom('SPIFFE://td/x', 'spiffe:/td/x', 'spiffe:td', 'spiffe://', 'spiffe:///x', 'spiffe://td/', 'spiffe://td//x', 'spiffe://td/./x', 'spiffe://td/x/..'),
)

describe('SpiffeId.parse fuzzing', () => {
  it('accepts every ID the spec grammar allows, and round-trips it', async () => {
    await checkProperty('identity: SpiffeId.parse (spec grammar)', fc.property(grammarId, ({ td, path: p, text }) => {
      const result = parseOrRefuse(CODES, () => SpiffeId.parse(text))
      expect(result.ok).toBe(specAllows(text))
      if (!result.ok) return
      const id = result.value
      expect(id.trustDomain.name).toBe(td)
      expect(id.path).toBe(p)
      expect(id.toString()).toBe(text)
      expect(SpiffeId.parse(id.toString()).equals(id)).toBe(true)
      expect(SpiffeId.fromPath(id.trustDomain, id.path).equals(id)).toBe(true)
      expect(TrustDomain.parse(id.trustDomain.id().toString()).equals(id.trustDomain)).toBe(true)
    }), 300)
  }, fuzzTimeout(20_000))

  it('refuses what the spec forbids with ERR_AMBIENT_INVALID_SPIFFE_ID and nothing else', async () => {
    await checkProperty('identity: SpiffeId.parse (mutated and arbitrary)', fc.property(anyText, (text) => {
      const result = parseOrRefuse(CODES, () => SpiffeId.parse(text))
      expect(result.ok).toBe(specAllows(text))
      if (result.ok) expect(result.value.toString()).toBe(text)
    }), 1000)
  }, fuzzTimeout(20_000))

  it('refuses non-string input with the same code', async () => {
    await checkProperty('identity: SpiffeId.parse (any value)', fc.property(fc.anything(), (value) => {
      fc.pre(typeof value !== 'string')
      expect(parseOrRefuse(CODES, () => SpiffeId.parse(value as string)).ok).toBe(false)
      expect(parseOrRefuse(CODES, () => TrustDomain.parse(value as string)).ok).toBe(false)
    }), 200)
  }, fuzzTimeout(20_000))

  it('parses trust domain names and IDs as the spec allows', async () => {
    await checkProperty('identity: TrustDomain.parse', fc.property(fc.oneof(trustDomainName, anyText), (text) => {
      const result = parseOrRefuse(CODES, () => TrustDomain.parse(text))
      const asName = !text.startsWith('spiffe://') && specAllows(`spiffe://${text}`) && !text.includes('/')
      const asId = text.startsWith('spiffe://') && specAllows(text) && !text.slice('spiffe://'.length).includes('/')
      expect(result.ok).toBe(asName || asId)
    }), 500)
  }, fuzzTimeout(20_000))

  it('builds service-account IDs only from single valid segments', async () => {
    const part = fc.oneof(segment, fc.string({ unit: fc.constantFrom(...HOSTILE_CHARS), maxLength: 12 }))
    await checkProperty('identity: SpiffeId.fromServiceAccount', fc.property(trustDomainName, part, part, (td, ns, sa) => {
      const result = parseOrRefuse(CODES, () => SpiffeId.fromServiceAccount(td, ns, sa))
      expect(result.ok).toBe(specAllows(`spiffe://${td}/ns/${ns}/sa/${sa}`) && !ns.includes('/') && !sa.includes('/'))
      if (result.ok) expect(result.value.toServiceAccount()).toEqual({ namespace: ns, serviceAccount: sa })
    }), 500)
  }, fuzzTimeout(20_000))
})
