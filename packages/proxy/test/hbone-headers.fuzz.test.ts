import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { parseSocketAddress } from '@ambientkit/core'
import { forwardedFor } from '../src/hbone/forwarded'
import { buildRequest, connectDestination } from '../src/transport/request'
import { checkProperty, fuzzTimeout } from '../../../test/support/fuzz'
import { canonicalFamily, ipArb, ipValueOf, portArb, type GeneratedIp } from '../../../test/support/fuzz-net'

// The request headers the HBONE server reads from an authenticated peer:
// `:method` and `:authority` (connectDestination), `forwarded` (RFC 7239,
// believed only from trusted peers), and what decide() sees (buildRequest).

const TCHAR = [...'!#$%&\'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ']
const token = fc.string({ unit: fc.constantFrom(...TCHAR), minLength: 1, maxLength: 12 })
/** RFC 7230 §3.2.6 quoted-string: any qdtext, with `"` and `\` escaped as quoted-pairs. */
const quoted = (text: string): string => `"${text.replace(/[\\"]/g, (c) => `\\${c}`)}"`
const quotedArb = fc.string({ unit: fc.constantFrom(...'ab;,="\\ :[]', '\t', 'x'), maxLength: 16 }).map(quoted)
const valueArb = fc.oneof(token, quotedArb)

/** RFC 7239 §6: a node, with what `forwardedFor` must read from it (the IP, or nothing for `unknown` and obfuscated names). */
const nodeArb: fc.Arbitrary<{ text: string; ip: GeneratedIp | undefined }> = fc.oneof(
  fc.tuple(ipArb, fc.option(portArb, { nil: undefined }), fc.boolean()).map(([ip, port, quote]) => {
    const name = ip.family === 6 ? `[${ip.text}]` : ip.text
    const node = port === undefined ? name : `${name}:${port}`
    // A colon or a bracket is not a token character: such nodes must be quoted (§4).
    return { text: quote || node !== ip.text ? quoted(node) : node, ip }
  }),
  fc.constantFrom('unknown', '_hidden', '_SEVKISEK', '"unknown:_port"').map((text) => ({ text, ip: undefined })),
)

const pairArb = fc.tuple(fc.constantFrom('by', 'proto', 'host', 'ext'), valueArb).map(([name, value]) => `${name}=${value}`)

/** One forwarded-element (§4): its pairs in any order, `for` at most once, names in any case. */
const elementArb = fc
  .tuple(fc.option(nodeArb, { nil: undefined }), fc.array(pairArb, { maxLength: 3 }), fc.nat(), fc.constantFrom('for', 'For', 'FOR'))
  .map(([node, others, at, forName]) => {
    const pairs = [...others]
    if (node !== undefined) pairs.splice(at % (pairs.length + 1), 0, `${forName}=${node.text}`)
    return { text: pairs.join(';'), ip: node?.ip }
  })

describe('forwarded header fuzzing (RFC 7239)', () => {
  it('reads the for= address of the first element, as RFC 7239 §4 defines it', async () => {
    await checkProperty('proxy: forwardedFor (RFC 7239 grammar)', fc.property(fc.array(elementArb, { minLength: 1, maxLength: 3 }), fc.constantFrom(',', ', ', ' , '), (elements, separator) => {
      const header = elements.map((e) => e.text).join(separator)
      const read = forwardedFor(header)
      const expected = elements[0]!.ip
      if (expected === undefined) {
        expect(read).toBeUndefined()
        return
      }
      const canonical = canonicalFamily(expected)
      expect(read).toBeDefined()
      expect(ipValueOf(read!)).toBe(canonical.value)
    }), 2000)
  }, fuzzTimeout(20_000))

  // Regression forwarded-quoted-string: the address read was one the peer put inside another parameter's quoted value.
  it('does not read a for= inside a quoted value (forwarded-quoted-string)', () => {
    expect(forwardedFor('by="x;for=6.6.6.6;";for=192.0.2.1')).toBe('192.0.2.1')
  })

  it('never throws and answers only a canonical IP or nothing, whatever the header', async () => {
    const header = fc.oneof(fc.string({ maxLength: 80 }), fc.string({ unit: fc.constantFrom(...'for=;,"[]:.0123456789abcdef '), maxLength: 80 }))
    await checkProperty('proxy: forwardedFor (arbitrary)', fc.property(header, (text) => {
      const read = forwardedFor(text)
      if (read !== undefined) expect(parseSocketAddress(read.includes(':') ? `[${read}]:1` : `${read}:1`).address).toBe(read)
    }), 2000)
  }, fuzzTimeout(20_000))
})

describe('CONNECT request fuzzing', () => {
  const peer = { identity: 'spiffe://cluster.local/ns/a/sa/b', address: { address: '127.0.0.1', port: 1, family: 4 as const } }

  it('answers every :method and :authority with a destination or a reason, never an exception', async () => {
    const method = fc.oneof(fc.constantFrom('CONNECT', 'connect', 'GET', ''), fc.anything())
    const authority = fc.oneof(fc.tuple(ipArb, portArb).map(([ip, port]) => (ip.family === 6 ? `[${ip.text}]:${port}` : `${ip.text}:${port}`)), fc.string({ maxLength: 50 }), fc.anything())
    await checkProperty('proxy: connectDestination', fc.property(method, authority, (m, a) => {
      const result = connectDestination(m, a)
      if (m !== 'CONNECT') expect(result).toBe('not-connect')
      else if (typeof result !== 'string') expect(result).toEqual(parseSocketAddress(a as string))
      else expect(result).toBe('bad-authority')
    }), 2000)
  }, fuzzTimeout(20_000))

  it('shows decide() the headers, hiding forwarded from untrusted peers', async () => {
    const headers = fc.dictionary(fc.oneof(fc.constantFrom('forwarded', 'baggage', 'traceparent', '__proto__', 'constructor'), fc.string({ maxLength: 10 })), fc.oneof(fc.string({ maxLength: 30 }), fc.array(fc.string({ maxLength: 5 }))), { maxKeys: 6 })
    await checkProperty('proxy: buildRequest', fc.property(headers, fc.boolean(), (h, trusted) => {
      const request = buildRequest(h, peer, { address: '10.0.0.1', port: 80, family: 4 }, trusted)
      if (!trusted) {
        expect(Object.hasOwn(request.headers, 'forwarded')).toBe(false)
        expect(request.forwardedFor).toBeUndefined()
      }
      expect(request.baggage).toBe(typeof h.baggage === 'string' && Object.hasOwn(h, 'baggage') ? h.baggage : undefined)
    }), 1000)
  }, fuzzTimeout(20_000))
})
