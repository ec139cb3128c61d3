import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  CoreErrorCode,
  evaluateAuthorization,
  formatSocketAddress,
  loadAuthorizationPolicy,
  normalizeService,
  normalizeWorkload,
  parseSocketAddress,
  parseWorkloadIdentity,
  workloadIdentity,
  type AuthorizationPolicy,
  type Service,
  type Workload,
} from '@ambientkit/core'
import { checkProperty, fuzzTimeout, parseOrRefuse } from '../../../test/support/fuzz'
import { canonicalFamily, cidrArb, cidrContains, ipArb, ipValueOf, portArb, type GeneratedIp } from '../../../test/support/fuzz-net'

// Core's parsers of outside input: socket addresses and CONNECT
// authorities, workloads and services, authorization policies.

const HOSTILE = [...'0123456789abcdefABCDEF:.[]%/ -+x', '\t', '\n', '\0', '٣', '０', 'é']

const authority = (ip: GeneratedIp, port: number): string => (ip.family === 6 ? `[${ip.text}]:${port}` : `${ip.text}:${port}`)

/** Edits a string: inserts, replaces or removes characters at fuzzed places. */
function mutate(base: fc.Arbitrary<string>, chars: readonly string[]): fc.Arbitrary<string> {
  return fc
    .tuple(base, fc.array(fc.tuple(fc.nat(), fc.nat({ max: 2 }), fc.constantFrom(...chars)), { minLength: 1, maxLength: 3 }))
    .map(([text, edits]) => {
      let s = text
      for (const [at, kind, char] of edits) {
        const i = at % (s.length + 1)
        s = kind === 0 ? s.slice(0, i) + char + s.slice(i) : kind === 1 ? s.slice(0, i) + char + s.slice(i + 1) : s.slice(0, i) + s.slice(i + 1)
      }
      return s
    })
}

describe('parseSocketAddress fuzzing', () => {
  it('accepts every RFC 3986 IP literal with a port, canonicalises it and round-trips', async () => {
    await checkProperty('core: parseSocketAddress (RFC 3986 grammar)', fc.property(ipArb, portArb, (ip, port) => {
      const text = authority(ip, port)
      const result = parseOrRefuse([CoreErrorCode.InvalidAddress], () => parseSocketAddress(text))
      if (!result.ok) throw new Error(`refused ${text}`)
      const expected = canonicalFamily(ip)
      expect(result.value.port).toBe(port)
      expect(result.value.family).toBe(expected.family)
      expect(ipValueOf(result.value.address)).toBe(expected.value)
      expect(result.value.address).toBe(result.value.address.toLowerCase())
      expect(parseSocketAddress(formatSocketAddress(result.value))).toEqual(result.value)
    }), 1000)
  }, fuzzTimeout(20_000))

  it('refuses anything else with ERR_AMBIENT_INVALID_ADDRESS only', async () => {
    const base = fc.tuple(ipArb, portArb).map(([ip, port]) => authority(ip, port))
    const input = fc.oneof(mutate(base, HOSTILE), fc.string({ unit: fc.constantFrom(...HOSTILE), maxLength: 60 }), fc.string({ unit: 'binary', maxLength: 40 }))
    await checkProperty('core: parseSocketAddress (mutated and arbitrary)', fc.property(input, (text) => {
      const result = parseOrRefuse([CoreErrorCode.InvalidAddress], () => parseSocketAddress(text))
      if (!result.ok) return
      // Strict form only: no host names, zones, whitespace or leading zeros in the port.
      expect(text).toMatch(/^([0-9.]+|\[[0-9a-fA-F:.]+\]):[1-9][0-9]{0,4}$/)
      expect(parseSocketAddress(formatSocketAddress(result.value))).toEqual(result.value)
    }), 2000)
  }, fuzzTimeout(20_000))

  it('refuses values that are not strings', async () => {
    await checkProperty('core: parseSocketAddress (any value)', fc.property(fc.anything(), (value) => {
      fc.pre(typeof value !== 'string')
      expect(parseOrRefuse([CoreErrorCode.InvalidAddress], () => parseSocketAddress(value as string)).ok).toBe(false)
    }), 200)
  }, fuzzTimeout(20_000))
})

const segmentName = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABC0123456789._-'), minLength: 1, maxLength: 20 }).filter((s) => s !== '.' && s !== '..')
const labelsArb = fc.dictionary(fc.string({ minLength: 1, maxLength: 10 }), fc.string({ maxLength: 10 }), { maxKeys: 4 })

const workloadArb: fc.Arbitrary<Workload> = fc.record(
  {
    uid: fc.string({ minLength: 1, maxLength: 20 }),
    name: fc.string({ minLength: 1, maxLength: 20 }),
    namespace: segmentName,
    serviceAccount: segmentName,
    node: fc.string({ minLength: 1, maxLength: 10 }),
    addresses: fc.array(ipArb.map((ip) => ip.text), { maxLength: 3 }),
    protocol: fc.constantFrom('HBONE' as const, 'TCP' as const),
    labels: labelsArb,
    trustDomain: fc.oneof(fc.string({ unit: fc.constantFrom(...'abcxyz0189._-'), minLength: 1, maxLength: 30 }), fc.integer({ min: 250, max: 260 }).map((n) => 't'.repeat(n))),
  },
  { requiredKeys: ['uid', 'name', 'namespace', 'serviceAccount', 'node', 'addresses', 'protocol', 'labels'] },
)

const serviceArb: fc.Arbitrary<Service> = fc.record({
  hostname: fc.string({ minLength: 1, maxLength: 30 }),
  namespace: segmentName,
  vips: fc.array(ipArb.map((ip) => ip.text), { maxLength: 3 }),
  ports: fc.dictionary(portArb.map(String), portArb, { maxKeys: 4 }) as fc.Arbitrary<Record<number, number>>,
  endpoints: fc.array(fc.string({ minLength: 1, maxLength: 10 }), { maxLength: 3 }),
})

/** Replaces one field (or one element of a list field) of a record with any value. */
function corrupt<T extends object>(valid: fc.Arbitrary<T>): fc.Arbitrary<unknown> {
  return fc.tuple(valid, fc.nat(), fc.anything({ maxDepth: 2 })).map(([value, pick, junk]) => {
    const copy = { ...value } as Record<string, unknown>
    const keys = Object.keys(copy)
    const key = keys[pick % keys.length]!
    const field = copy[key]
    if (Array.isArray(field) && field.length > 0 && pick % 2 === 0) copy[key] = field.map((v, i) => (i === pick % field.length ? junk : v))
    else copy[key] = junk
    return copy
  })
}

describe('workload and service fuzzing', () => {
  it('accepts valid workloads and services, canonicalising addresses idempotently', async () => {
    await checkProperty('core: normalizeWorkload / normalizeService (valid)', fc.property(workloadArb, serviceArb, (workload, service) => {
      const w = parseOrRefuse([CoreErrorCode.InvalidWorkload, CoreErrorCode.InvalidAddress], () => normalizeWorkload(workload))
      // SPIFFE-ID §2.3: a trust domain is at most 255 bytes; a workload's identity must be a valid ID.
      const spiffeValid = (workload.trustDomain ?? 'cluster.local').length <= 255
      expect(w.ok).toBe(spiffeValid)
      if (!w.ok) return
      expect(normalizeWorkload(w.value)).toEqual(w.value)
      expect(parseWorkloadIdentity(workloadIdentity(w.value))).toEqual({ trustDomain: w.value.trustDomain ?? 'cluster.local', namespace: w.value.namespace, serviceAccount: w.value.serviceAccount })
      const s = parseOrRefuse([CoreErrorCode.InvalidWorkload, CoreErrorCode.InvalidAddress], () => normalizeService(service))
      if (!s.ok) throw new Error(`refused service: ${s.code}`)
      expect(normalizeService(s.value)).toEqual(s.value)
    }), 500)
  }, fuzzTimeout(20_000))

  it('refuses corrupted workloads and services with documented codes only', async () => {
    await checkProperty('core: normalizeWorkload / normalizeService (corrupted)', fc.property(corrupt(workloadArb), corrupt(serviceArb), fc.anything(), (workload, service, anything) => {
      for (const input of [workload, service, anything]) {
        parseOrRefuse([CoreErrorCode.InvalidWorkload, CoreErrorCode.InvalidAddress], () => normalizeWorkload(input as Workload))
        parseOrRefuse([CoreErrorCode.InvalidWorkload, CoreErrorCode.InvalidAddress], () => normalizeService(input as Service))
      }
    }), 1000)
  }, fuzzTimeout(20_000))
})

// Authorization policies, generated from the model docs/configuration.md describes.
const name = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789-'), minLength: 1, maxLength: 12 })
/** An exact value, a prefix `foo*`, a suffix `*foo`, or `*`, of a base string. */
const pattern = (base: fc.Arbitrary<string>): fc.Arbitrary<string> =>
  fc.oneof(base, base.map((b) => `${b}*`), base.map((b) => `*${b}`), fc.constant('*'))
const principal = fc.tuple(fc.boolean(), name, name, name).map(([scheme, td, ns, sa]) => `${scheme ? 'spiffe://' : ''}${td}/ns/${ns}/sa/${sa}`)
const serviceAccount = fc.oneof(name, fc.tuple(name, name).map(([ns, sa]) => `${ns}/${sa}`))
const list = <T>(item: fc.Arbitrary<T>): fc.Arbitrary<T[]> => fc.array(item, { minLength: 1, maxLength: 3 })

const matchArb = fc.record(
  {
    namespaces: list(pattern(name)),
    notNamespaces: list(pattern(name)),
    serviceAccounts: list(pattern(serviceAccount)),
    notServiceAccounts: list(pattern(serviceAccount)),
    principals: list(pattern(principal)),
    notPrincipals: list(pattern(principal)),
    sourceIps: list(cidrArb.map((c) => c.text)),
    notSourceIps: list(cidrArb.map((c) => c.text)),
    destinationIps: list(cidrArb.map((c) => c.text)),
    notDestinationIps: list(cidrArb.map((c) => c.text)),
    destinationPorts: list(portArb),
    notDestinationPorts: list(portArb),
  },
  { requiredKeys: [] },
)

const policyArb = fc
  .record({
    name,
    namespace: name,
    scope: fc.constantFrom('global', 'namespace', 'workload'),
    action: fc.constantFrom('ALLOW', 'DENY'),
    selector: fc.dictionary(name, fc.string({ maxLength: 8 }), { minKeys: 1, maxKeys: 3 }),
    rules: fc.array(list(list(matchArb)), { maxLength: 3 }),
  })
  .map(({ selector, ...p }) => (p.scope === 'workload' ? { ...p, selector } : p))

const connectionArb = fc.record({
  sourceIp: ipArb.map((ip) => ip.text),
  sourceIdentity: fc.option(fc.oneof(principal.map((p) => (p.startsWith('spiffe://') ? p : `spiffe://${p}`)), fc.string({ maxLength: 30 })), { nil: undefined }),
  destinationIp: ipArb.map((ip) => ip.text),
  destinationPort: portArb,
  destination: fc.record({ namespace: name, labels: fc.dictionary(name, fc.string({ maxLength: 8 }), { maxKeys: 3 }) }),
})

describe('authorization policy fuzzing', () => {
  it('accepts every policy of the documented model, round-trips it through JSON, and evaluates any connection', async () => {
    await checkProperty('core: loadAuthorizationPolicy (model grammar)', fc.property(policyArb, fc.array(connectionArb, { maxLength: 3 }), (input, connections) => {
      const result = parseOrRefuse([CoreErrorCode.InvalidPolicy], () => loadAuthorizationPolicy(input))
      if (!result.ok) throw new Error(`refused a valid policy: ${JSON.stringify(input)}`)
      expect(result.value).toEqual(input)
      const again = loadAuthorizationPolicy(JSON.parse(JSON.stringify(result.value)))
      expect(again).toEqual(result.value)
      for (const connection of connections) {
        const decision = evaluateAuthorization([result.value], connection)
        expect(evaluateAuthorization([again], connection)).toEqual({ ...decision, ...(decision.policy ? { policy: again } : {}) })
      }
    }), 500)
  }, fuzzTimeout(30_000))

  it('matches source CIDRs exactly as RFC 4632 defines them', async () => {
    await checkProperty('core: evaluateAuthorization (CIDR semantics)', fc.property(cidrArb, ipArb, (cidr, ip) => {
      const policy = loadAuthorizationPolicy({ name: 'p', namespace: 'n', scope: 'global', action: 'DENY', rules: [[[{ sourceIps: [cidr.text] }]]] })
      const decision = evaluateAuthorization([policy], { sourceIp: ip.text, destinationIp: '10.0.0.1', destinationPort: 80, destination: { namespace: 'n', labels: {} } })
      expect(decision.allowed).toBe(!cidrContains(cidr, canonicalFamily(ip)))
    }), 1000)
  }, fuzzTimeout(20_000))

  it('refuses corrupted policies with ERR_AMBIENT_INVALID_POLICY only', async () => {
    const corrupted = fc.oneof(
      corrupt(policyArb),
      // A fuzzed value deep inside a match.
      fc.tuple(policyArb, fc.anything({ maxDepth: 2 }), fc.constantFrom('namespaces', 'serviceAccounts', 'principals', 'sourceIps', 'destinationPorts', 'bogus')).map(([p, junk, field]) => ({
        ...p,
        rules: [[[{ [field]: junk }]], ...p.rules],
      })),
      fc.tuple(policyArb, mutate(cidrArb.map((c) => c.text), HOSTILE)).map(([p, cidr]) => ({ ...p, rules: [[[{ destinationIps: [cidr] }]]] })),
      fc.anything(),
    )
    await checkProperty('core: loadAuthorizationPolicy (corrupted)', fc.property(corrupted, connectionArb, (input, connection) => {
      const result = parseOrRefuse([CoreErrorCode.InvalidPolicy], () => loadAuthorizationPolicy(input))
      if (result.ok) evaluateAuthorization([result.value as AuthorizationPolicy], connection)
    }), 2000)
  }, fuzzTimeout(30_000))
})
