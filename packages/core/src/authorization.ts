import { IPv4, IPv4CidrRange, IPv6, IPv6CidrRange } from 'ip-num'
import { ipFamily, isPort, tryCanonicalIp, type IpFamily } from './address'
import { AmbientError, CoreErrorCode, describeValue } from './errors'
import { parseWorkloadIdentity, type Workload } from './workload'

/**
 * One match of an L4 authorization rule. Every field it sets must hold (the
 * connection has any one of the listed values), and no value of a `not*`
 * twin may match. String fields take an exact value, a prefix `foo*`, a
 * suffix `*foo`, or `*` (any value present).
 */
export interface AuthorizationMatch {
  /** Source namespaces (from the peer's SPIFFE ID). */
  namespaces?: readonly string[]
  notNamespaces?: readonly string[]
  /** Source service accounts: `namespace/name`, or `name` in the policy's namespace. */
  serviceAccounts?: readonly string[]
  notServiceAccounts?: readonly string[]
  /** Source principals: `trust-domain/ns/<ns>/sa/<sa>`; a leading `spiffe://` is accepted. */
  principals?: readonly string[]
  notPrincipals?: readonly string[]
  /** Source IP CIDRs (a bare address means one host), IPv4 or IPv6. */
  sourceIps?: readonly string[]
  notSourceIps?: readonly string[]
  /** Destination IP CIDRs. */
  destinationIps?: readonly string[]
  notDestinationIps?: readonly string[]
  /** Destination ports, 1–65535. */
  destinationPorts?: readonly number[]
  notDestinationPorts?: readonly number[]
}

/** A clause matches if ANY of its matches does. */
export type AuthorizationClause = readonly AuthorizationMatch[]
/** A rule matches if ALL of its clauses do. */
export type AuthorizationRule = readonly AuthorizationClause[]

/** Where a policy applies. */
export type AuthorizationScope = 'global' | 'namespace' | 'workload'
/** What a matching policy does. */
export type AuthorizationAction = 'ALLOW' | 'DENY'

/** An L4 authorization policy, the model Istio's ztunnel enforces. */
export interface AuthorizationPolicy {
  readonly name: string
  readonly namespace: string
  /**
   * `global`: every workload in the mesh; `namespace`: workloads in
   * `namespace`; `workload`: workloads in `namespace` whose labels contain
   * every entry of `selector`, or the workloads listed in `workloads`.
   */
  readonly scope: AuthorizationScope
  /** Labels selecting workloads; scope `workload` takes it or `workloads`, other scopes neither. */
  readonly selector?: Readonly<Record<string, string>>
  /**
   * UIDs of the workloads the policy applies to, for a control plane that
   * selects workloads itself (Istio lists on each workload the policies of
   * scope WORKLOAD_SELECTOR that select it). Scope `workload` takes it or
   * `selector`; an empty list applies to no workload.
   */
  readonly workloads?: readonly string[]
  readonly action: AuthorizationAction
  /** The policy matches if ANY rule matches. A policy with no rules never matches. */
  readonly rules: readonly AuthorizationRule[]
}

/** The facts of a connection that policies are evaluated against. */
export interface AuthorizationConnection {
  readonly sourceIp: string
  /** The peer's verified SPIFFE ID; absent for plaintext peers. */
  readonly sourceIdentity?: string
  readonly destinationIp: string
  readonly destinationPort: number
  /** The destination workload (its namespace, labels and uid select policies). */
  readonly destination: Pick<Workload, 'namespace' | 'labels'> & { readonly uid?: string }
}

/** Why a decision was taken. */
export type AuthorizationReason =
  | 'denied-by-policy'
  | 'allowed-by-policy'
  | 'no-allow-policy-matched'
  | 'no-allow-policy-applies'

/** The outcome of {@link evaluateAuthorization}. */
export interface AuthorizationDecision {
  readonly allowed: boolean
  readonly reason: AuthorizationReason
  /** The policy that decided: the matching DENY or ALLOW policy. */
  readonly policy?: AuthorizationPolicy
}

const MATCH_FIELDS = [
  'namespaces', 'serviceAccounts', 'principals', 'sourceIps', 'destinationIps', 'destinationPorts',
] as const
type MatchField = (typeof MATCH_FIELDS)[number]
const negated = (field: MatchField): keyof AuthorizationMatch =>
  `not${field[0]!.toUpperCase()}${field.slice(1)}` as keyof AuthorizationMatch
const ALL_MATCH_FIELDS = new Set<string>(MATCH_FIELDS.flatMap((f) => [f, negated(f)]))
const POLICY_FIELDS = new Set(['name', 'namespace', 'scope', 'selector', 'workloads', 'action', 'rules'])

type StringMatcher = (value: string) => boolean
interface Cidr {
  family: IpFamily
  first: bigint
  last: bigint
}
interface CompiledMatch {
  namespaces?: StringMatcher[]
  notNamespaces?: StringMatcher[]
  serviceAccounts?: StringMatcher[]
  notServiceAccounts?: StringMatcher[]
  principals?: StringMatcher[]
  notPrincipals?: StringMatcher[]
  sourceIps?: Cidr[]
  notSourceIps?: Cidr[]
  destinationIps?: Cidr[]
  notDestinationIps?: Cidr[]
  destinationPorts?: Set<number>
  notDestinationPorts?: Set<number>
}
interface CompiledPolicy {
  policy: AuthorizationPolicy
  rules: CompiledMatch[][][]
  workloads?: Set<string>
}

const compiledPolicies = new WeakMap<AuthorizationPolicy, CompiledPolicy>()

function policyError(policy: string, path: string, value: unknown, expected: string): AmbientError<'ERR_AMBIENT_INVALID_POLICY'> {
  return new AmbientError(
    CoreErrorCode.InvalidPolicy,
    `authorization policy ${policy}: ${path}: expected ${expected}, got ${describeValue(value)}`,
    { details: { policy, name: path, value } },
  )
}

/**
 * Validates an authorization policy (parsed JSON or YAML, or an object
 * literal) and returns it frozen and ready for {@link evaluateAuthorization}.
 * Unknown fields, empty lists or values, invalid CIDRs, ports outside
 * 1–65535 and unsupported patterns are errors (`ERR_AMBIENT_INVALID_POLICY`)
 * naming the field and the value: a DENY policy that silently matched
 * nothing would be a security hole.
 */
export function loadAuthorizationPolicy(input: unknown): AuthorizationPolicy {
  if (typeof input === 'object' && input !== null && compiledPolicies.has(input as AuthorizationPolicy)) {
    return input as AuthorizationPolicy
  }
  const obj = asObject('policy', '', input)
  const label = typeof obj.name === 'string' && typeof obj.namespace === 'string' ? `${obj.namespace}/${obj.name}` : '(unnamed)'
  const fail = (path: string, value: unknown, expected: string): never => {
    throw policyError(label, path, value, expected)
  }
  for (const key of Object.keys(obj)) if (!POLICY_FIELDS.has(key)) fail(key, obj[key], `no such field (known: ${[...POLICY_FIELDS].join(', ')})`)
  const name = nonEmptyString(obj.name) ?? fail('name', obj.name, 'a non-empty string')
  const namespace = nonEmptyString(obj.namespace) ?? fail('namespace', obj.namespace, 'a non-empty string')
  const scope = obj.scope
  if (scope !== 'global' && scope !== 'namespace' && scope !== 'workload') fail('scope', scope, '"global", "namespace" or "workload"')
  const action = obj.action
  if (action !== 'ALLOW' && action !== 'DENY') fail('action', action, '"ALLOW" or "DENY"')
  let selector: Record<string, string> | undefined
  let workloads: string[] | undefined
  if (scope === 'workload' && obj.workloads !== undefined) {
    if (obj.selector !== undefined) fail('selector', obj.selector, 'no selector beside "workloads" (one or the other)')
    if (!Array.isArray(obj.workloads)) fail('workloads', obj.workloads, 'an array of workload uids')
    workloads = (obj.workloads as unknown[]).map((uid, i) => nonEmptyString(uid) ?? fail(`workloads[${i}]`, uid, 'a non-empty workload uid'))
  } else if (scope === 'workload') {
    const sel = asObject(label, 'selector', obj.selector)
    if (Object.keys(sel).length === 0) fail('selector', sel, 'at least one label (scope "workload")')
    for (const [k, v] of Object.entries(sel)) if (nonEmptyString(k) === undefined || typeof v !== 'string') fail(`selector.${k}`, v, 'a string label value')
    selector = { ...(sel as Record<string, string>) }
  } else if (obj.selector !== undefined || obj.workloads !== undefined) {
    const field = obj.selector !== undefined ? 'selector' : 'workloads'
    fail(field, obj[field], `no ${field} with scope "${String(scope)}" (only scope "workload" takes one)`)
  }
  const rulesInput = obj.rules
  if (!Array.isArray(rulesInput)) fail('rules', rulesInput, 'an array of rules (each an array of clauses)')
  const rules: AuthorizationMatch[][][] = []
  const compiledRules: CompiledMatch[][][] = []
  ;(rulesInput as unknown[]).forEach((rule, r) => {
    if (!Array.isArray(rule) || rule.length === 0) fail(`rules[${r}]`, rule, 'a non-empty array of clauses')
    const clauses: AuthorizationMatch[][] = []
    const compiledClauses: CompiledMatch[][] = []
    ;(rule as unknown[]).forEach((clause, c) => {
      if (!Array.isArray(clause) || clause.length === 0) fail(`rules[${r}][${c}]`, clause, 'a non-empty array of matches')
      const matches: AuthorizationMatch[] = []
      const compiledMatches: CompiledMatch[] = []
      ;(clause as unknown[]).forEach((m, i) => {
        const [match, compiled] = compileMatch(`rules[${r}][${c}][${i}]`, m, namespace, fail)
        matches.push(match)
        compiledMatches.push(compiled)
      })
      clauses.push(Object.freeze(matches) as AuthorizationMatch[])
      compiledClauses.push(compiledMatches)
    })
    rules.push(Object.freeze(clauses) as AuthorizationMatch[][])
    compiledRules.push(compiledClauses)
  })
  const policy: AuthorizationPolicy = Object.freeze({
    name,
    namespace,
    scope: scope as AuthorizationScope,
    ...(selector === undefined ? {} : { selector: Object.freeze(selector) }),
    ...(workloads === undefined ? {} : { workloads: Object.freeze(workloads) }),
    action: action as AuthorizationAction,
    rules: Object.freeze(rules),
  })
  compiledPolicies.set(policy, { policy, rules: compiledRules, ...(workloads === undefined ? {} : { workloads: new Set(workloads) }) })
  return policy
}

function asObject(policy: string, path: string, value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw policyError(policy, path || 'policy', value, 'an object')
  return value as Record<string, unknown>
}

function nonEmptyString(value: unknown): string | undefined {
  return typeof value === 'string' && value.length > 0 ? value : undefined
}

function compileMatch(
  path: string,
  input: unknown,
  policyNamespace: string,
  fail: (path: string, value: unknown, expected: string) => never,
): [AuthorizationMatch, CompiledMatch] {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) fail(path, input, 'a match object')
  const obj = input as Record<string, unknown>
  const match: Record<string, unknown> = {}
  const compiled: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(obj)) {
    const at = `${path}.${key}`
    if (!ALL_MATCH_FIELDS.has(key)) fail(at, value, `no such match field (known: ${[...ALL_MATCH_FIELDS].join(', ')})`)
    if (!Array.isArray(value) || value.length === 0) fail(at, value, 'a non-empty array')
    const list = value as unknown[]
    const base = key.startsWith('not') ? `${key[3]!.toLowerCase()}${key.slice(4)}` : key
    switch (base as MatchField) {
      case 'namespaces':
      case 'principals':
      case 'serviceAccounts':
        compiled[key] = list.map((v, i) => {
          const text = nonEmptyString(v) ?? fail(`${at}[${i}]`, v, 'a non-empty string')
          if (base === 'principals') return stringMatcher(stripScheme(text), `${at}[${i}]`, fail)
          if (base !== 'serviceAccounts' || text.includes('/') || text === '*') return stringMatcher(text, `${at}[${i}]`, fail)
          // A bare name (exact, `foo*` or `*foo`) is one of the policy namespace's service accounts.
          const name = stringMatcher(text, `${at}[${i}]`, fail)
          const prefix = `${policyNamespace}/`
          return (account: string) => account.startsWith(prefix) && name(account.slice(prefix.length))
        })
        break
      case 'sourceIps':
      case 'destinationIps':
        compiled[key] = list.map((v, i) => parseCidr(v, `${at}[${i}]`, fail))
        break
      case 'destinationPorts':
        compiled[key] = new Set(list.map((v, i) => (isPort(v) ? v : fail(`${at}[${i}]`, v, 'a port 1-65535'))))
        break
    }
    match[key] = Object.freeze([...list])
  }
  return [Object.freeze(match) as AuthorizationMatch, compiled as CompiledMatch]
}

function stripScheme(principal: string): string {
  return principal.startsWith('spiffe://') ? principal.slice('spiffe://'.length) : principal
}

function stringMatcher(pattern: string, at: string, fail: (path: string, value: unknown, expected: string) => never): StringMatcher {
  if (pattern === '*') return () => true
  const star = pattern.indexOf('*')
  if (star < 0) return (v) => v === pattern
  if (pattern.indexOf('*', star + 1) >= 0 || (star !== 0 && star !== pattern.length - 1)) {
    fail(at, pattern, 'an exact value, a prefix "foo*", a suffix "*foo" or "*"')
  }
  if (star === 0) {
    const suffix = pattern.slice(1)
    return (v) => v.endsWith(suffix)
  }
  const prefix = pattern.slice(0, -1)
  return (v) => v.startsWith(prefix)
}

function parseCidr(value: unknown, at: string, fail: (path: string, value: unknown, expected: string) => never): Cidr {
  const expected = 'an IPv4 or IPv6 CIDR such as "10.0.0.0/8" or "2001:db8::/32", or a single address'
  if (typeof value !== 'string' || value.length === 0) return fail(at, value, expected)
  const slash = value.indexOf('/')
  const ipText = slash < 0 ? value : value.slice(0, slash)
  const ip = tryCanonicalIp(ipText)
  if (ip === undefined) return fail(at, value, expected)
  const family = ipFamily(ip)
  // An IPv4-mapped IPv6 CIDR (::ffff:10.0.0.0/104) is written over 128 bits but
  // canonicalises to IPv4, as the peers it matches do: its prefix counts from bit 96.
  const mapped = family === 4 && ipText.includes(':')
  const max = family === 6 || mapped ? 128 : 32
  const writtenPrefix = slash < 0 ? String(max) : value.slice(slash + 1)
  if (!/^(0|[1-9][0-9]{0,2})$/.test(writtenPrefix) || Number(writtenPrefix) > max) return fail(at, value, `${expected} (prefix length 0-${max})`)
  if (mapped && Number(writtenPrefix) < 96) return fail(at, value, 'a CIDR without host bits set (an IPv4-mapped CIDR has a prefix length of 96 or more)')
  const prefixText = mapped ? String(Number(writtenPrefix) - 96) : writtenPrefix
  try {
    const range = family === 4 ? IPv4CidrRange.fromCidr(`${ip}/${prefixText}`) : IPv6CidrRange.fromCidr(`${ip}/${prefixText}`)
    const first = range.getFirst().getValue()
    if (first !== ipValue(ip)) {
      return fail(at, value, `a CIDR without host bits set (did you mean ${range.getFirst().toString()}/${prefixText}?)`)
    }
    return { family, first, last: range.getLast().getValue() }
  } catch (err) {
    if (err instanceof AmbientError) throw err
    return fail(at, value, expected)
  }
}

function ipValue(canonical: string): bigint {
  return ipFamily(canonical) === 4 ? IPv4.fromString(canonical).getValue() : IPv6.fromString(canonical).getValue()
}

function compiledOf(policy: AuthorizationPolicy): CompiledPolicy {
  let compiled = compiledPolicies.get(policy)
  if (compiled === undefined) {
    const loaded = loadAuthorizationPolicy(policy)
    compiled = compiledPolicies.get(loaded)!
    compiledPolicies.set(policy, compiled)
  }
  return compiled
}

/** True when `policy` applies to connections to `destination` (by scope, and selector or workload list). */
export function policyApplies(policy: AuthorizationPolicy, destination: AuthorizationConnection['destination']): boolean {
  switch (policy.scope) {
    case 'global':
      return true
    case 'namespace':
      return policy.namespace === destination.namespace
    case 'workload':
      if (policy.workloads !== undefined) return destination.uid !== undefined && compiledOf(policy).workloads!.has(destination.uid)
      return (
        policy.namespace === destination.namespace &&
        Object.entries(policy.selector ?? {}).every(([k, v]) => destination.labels[k] === v)
      )
  }
}

interface ConnectionFacts {
  namespace?: string
  serviceAccount?: string
  principal?: string
  source?: { family: IpFamily; value: bigint }
  destination?: { family: IpFamily; value: bigint }
  port: number
}

// Built once per evaluation; the addresses are turned into numbers only when
// a CIDR field asks for them (most policies match identities and ports).
function facts(connection: AuthorizationConnection): ConnectionFacts {
  const identity = connection.sourceIdentity === undefined ? undefined : parseWorkloadIdentity(connection.sourceIdentity)
  const ip = (text: string): ConnectionFacts['source'] => {
    const canonical = tryCanonicalIp(text)
    return canonical === undefined ? undefined : { family: ipFamily(canonical), value: ipValue(canonical) }
  }
  let source: ConnectionFacts['source'] | null = null
  let destination: ConnectionFacts['destination'] | null = null
  return {
    ...(identity === undefined ? {} : { namespace: identity.namespace, serviceAccount: `${identity.namespace}/${identity.serviceAccount}` }),
    ...(connection.sourceIdentity === undefined ? {} : { principal: stripScheme(connection.sourceIdentity) }),
    get source() {
      if (source === null) source = ip(connection.sourceIp)
      return source
    },
    get destination() {
      if (destination === null) destination = ip(connection.destinationIp)
      return destination
    },
    port: connection.destinationPort,
  }
}

function anyString(matchers: StringMatcher[], value: string | undefined): boolean {
  return value !== undefined && matchers.some((m) => m(value))
}
function anyCidr(cidrs: Cidr[], ip: ConnectionFacts['source']): boolean {
  return ip !== undefined && cidrs.some((c) => c.family === ip.family && ip.value >= c.first && ip.value <= c.last)
}

// A positive field holds when the connection has one of its values; a
// plaintext peer has no identity, so identity fields never hold for it,
// and for the same reason their negated twins never exclude it.
function matchHolds(m: CompiledMatch, f: ConnectionFacts): boolean {
  if (m.namespaces !== undefined && !anyString(m.namespaces, f.namespace)) return false
  if (m.notNamespaces !== undefined && anyString(m.notNamespaces, f.namespace)) return false
  if (m.serviceAccounts !== undefined && !anyString(m.serviceAccounts, f.serviceAccount)) return false
  if (m.notServiceAccounts !== undefined && anyString(m.notServiceAccounts, f.serviceAccount)) return false
  if (m.principals !== undefined && !anyString(m.principals, f.principal)) return false
  if (m.notPrincipals !== undefined && anyString(m.notPrincipals, f.principal)) return false
  if (m.sourceIps !== undefined && !anyCidr(m.sourceIps, f.source)) return false
  if (m.notSourceIps !== undefined && anyCidr(m.notSourceIps, f.source)) return false
  if (m.destinationIps !== undefined && !anyCidr(m.destinationIps, f.destination)) return false
  if (m.notDestinationIps !== undefined && anyCidr(m.notDestinationIps, f.destination)) return false
  if (m.destinationPorts !== undefined && !m.destinationPorts.has(f.port)) return false
  if (m.notDestinationPorts !== undefined && m.notDestinationPorts.has(f.port)) return false
  return true
}

function policyMatches(compiled: CompiledPolicy, f: ConnectionFacts): boolean {
  return compiled.rules.some((rule) => rule.every((clause) => clause.some((m) => matchHolds(m, f))))
}

/**
 * Decides a connection: any matching DENY policy denies; otherwise, if no
 * ALLOW policy applies to the destination, the connection is allowed; if
 * some do, one of them must match. Policies not yet loaded are validated
 * first (and throw `ERR_AMBIENT_INVALID_POLICY` if malformed).
 */
export function evaluateAuthorization(
  policies: Iterable<AuthorizationPolicy>,
  connection: AuthorizationConnection,
): AuthorizationDecision {
  let f: ConnectionFacts | undefined
  const allows: CompiledPolicy[] = []
  for (const policy of policies) {
    if (!policyApplies(policy, connection.destination)) continue
    const compiled = compiledOf(policy)
    f ??= facts(connection)
    if (policy.action === 'DENY') {
      if (policyMatches(compiled, f)) return { allowed: false, reason: 'denied-by-policy', policy: compiled.policy }
    } else {
      allows.push(compiled)
    }
  }
  if (allows.length === 0) return { allowed: true, reason: 'no-allow-policy-applies' }
  for (const compiled of allows) {
    if (policyMatches(compiled, f!)) return { allowed: true, reason: 'allowed-by-policy', policy: compiled.policy }
  }
  return { allowed: false, reason: 'no-allow-policy-matched' }
}
