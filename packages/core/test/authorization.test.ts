import { describe, expect, it } from 'vitest'
import {
  createPolicyStore,
  evaluateAuthorization,
  isAmbientError,
  loadAuthorizationPolicy,
  type AuthorizationConnection,
  type AuthorizationMatch,
  type AuthorizationPolicy,
} from '@ambientkit/core'

const destination = { namespace: 'shop', labels: { app: 'api', tier: 'backend' } }

const conn = (overrides: Partial<AuthorizationConnection> = {}): AuthorizationConnection => ({
  sourceIp: '10.0.1.7',
  sourceIdentity: 'spiffe://cluster.local/ns/web/sa/frontend',
  destinationIp: '10.0.2.5',
  destinationPort: 8080,
  destination,
  ...overrides,
})

const policy = (action: 'ALLOW' | 'DENY', ...matches: AuthorizationMatch[]): AuthorizationPolicy =>
  loadAuthorizationPolicy({ name: `${action.toLowerCase()}-p`, namespace: 'shop', scope: 'namespace', action, rules: [[matches]] })

const matches = (match: AuthorizationMatch, connection: AuthorizationConnection = conn()): boolean =>
  evaluateAuthorization([policy('DENY', match)], connection).allowed === false

describe('match fields', () => {
  it.each<[string, AuthorizationMatch, boolean]>([
    ['namespace listed', { namespaces: ['other', 'web'] }, true],
    ['namespace not listed', { namespaces: ['other'] }, false],
    ['namespace prefix', { namespaces: ['we*'] }, true],
    ['namespace suffix', { namespaces: ['*eb'] }, true],
    ['negated namespace listed', { notNamespaces: ['web'] }, false],
    ['negated namespace not listed', { notNamespaces: ['other'] }, true],
    ['service account ns/sa', { serviceAccounts: ['web/frontend'] }, true],
    ['service account defaults to the policy namespace', { serviceAccounts: ['frontend'] }, false],
    ['negated service account', { notServiceAccounts: ['web/frontend'] }, false],
    ['principal exact', { principals: ['cluster.local/ns/web/sa/frontend'] }, true],
    ['principal exact with scheme', { principals: ['spiffe://cluster.local/ns/web/sa/frontend'] }, true],
    ['principal exact other', { principals: ['cluster.local/ns/web/sa/backend'] }, false],
    ['principal prefix', { principals: ['cluster.local/ns/web/*'] }, true],
    ['principal prefix other', { principals: ['cluster.local/ns/shop/*'] }, false],
    ['principal suffix', { principals: ['*/sa/frontend'] }, true],
    ['principal suffix other', { principals: ['*/sa/backend'] }, false],
    ['principal presence', { principals: ['*'] }, true],
    ['negated principal presence', { notPrincipals: ['*'] }, false],
    ['negated principal prefix', { notPrincipals: ['cluster.local/ns/web/*'] }, false],
    ['negated principal other', { notPrincipals: ['cluster.local/ns/other/*'] }, true],
    ['source CIDR', { sourceIps: ['10.0.0.0/16'] }, true],
    ['source CIDR other', { sourceIps: ['10.1.0.0/16'] }, false],
    ['source host', { sourceIps: ['10.0.1.7'] }, true],
    ['negated source CIDR', { notSourceIps: ['10.0.1.0/24'] }, false],
    ['destination CIDR', { destinationIps: ['10.0.2.0/24'] }, true],
    ['negated destination CIDR', { notDestinationIps: ['10.0.2.5/32'] }, false],
    ['0.0.0.0/0 matches any IPv4 source', { sourceIps: ['0.0.0.0/0'] }, true],
    ['destination port', { destinationPorts: [80, 8080] }, true],
    ['destination port other', { destinationPorts: [80] }, false],
    ['negated destination port', { notDestinationPorts: [8080] }, false],
    ['every set field must hold', { namespaces: ['web'], destinationPorts: [80] }, false],
    ['fields and negations together', { namespaces: ['web'], notPrincipals: ['*/sa/backend'], destinationPorts: [8080] }, true],
  ])('%s', (_name, match, expected) => {
    expect(matches(match)).toBe(expected)
  })

  it('matches IPv6 CIDRs, including the mapped form of IPv4 peers', () => {
    const v6 = conn({ sourceIp: '2001:db8:1::7', destinationIp: '2001:0db8:2::5' })
    expect(matches({ sourceIps: ['2001:db8::/32'] }, v6)).toBe(true)
    expect(matches({ sourceIps: ['2001:db8:2::/48'] }, v6)).toBe(false)
    expect(matches({ destinationIps: ['2001:db8:2::5/128'] }, v6)).toBe(true)
    expect(matches({ notSourceIps: ['2001:db8:1::/48'] }, v6)).toBe(false)
    expect(matches({ sourceIps: ['0.0.0.0/0'] }, v6)).toBe(false)
    expect(matches({ sourceIps: ['::/0'] }, conn())).toBe(false)
    expect(matches({ sourceIps: ['10.0.1.0/24'] }, conn({ sourceIp: '::ffff:10.0.1.7' }))).toBe(true)
  })

  // Found by fuzzing: `*foo` was documented for every string field, but a bare
  // service account suffix became `ns/*foo` and was refused as unsupported.
  it('takes a service account suffix "*foo" in the policy namespace', () => {
    const inShop = conn({ sourceIdentity: 'spiffe://cluster.local/ns/shop/sa/frontend' })
    expect(matches({ serviceAccounts: ['*end'] }, inShop)).toBe(true)
    expect(matches({ serviceAccounts: ['*end'] }, conn())).toBe(false)
    expect(matches({ serviceAccounts: ['*back'] }, inShop)).toBe(false)
    expect(matches({ serviceAccounts: ['front*'] }, inShop)).toBe(true)
    expect(matches({ notServiceAccounts: ['*end'] }, inShop)).toBe(false)
  })

  // Found by fuzzing: an IPv4-mapped CIDR was refused as "prefix length 0-32"
  // and an address of ::/96 made evaluation throw.
  it('takes IPv4-mapped CIDRs as the IPv4 ranges they map, and ::/96 addresses', () => {
    expect(matches({ sourceIps: ['::ffff:10.0.0.0/112'] })).toBe(true)
    expect(matches({ sourceIps: ['::ffff:10.1.0.0/112'] })).toBe(false)
    expect(matches({ sourceIps: ['::ffff:0:0/96'] })).toBe(true)
    expect(matches({ sourceIps: ['::ffff:10.0.1.7'] })).toBe(true)
    expect(() => policy('DENY', { sourceIps: ['::ffff:0:0/95'] })).toThrow(/prefix length of 96 or more/)
    expect(matches({ sourceIps: ['::1:0/112'] }, conn({ sourceIp: '::1:7' }))).toBe(true)
    expect(matches({ sourceIps: ['::1:0/112'] }, conn({ sourceIp: '::2:7' }))).toBe(false)
  })

  it('plaintext peers match no identity field, and identity negations do not exclude them', () => {
    const plaintext = conn({ sourceIdentity: undefined })
    expect(matches({ principals: ['*'] }, plaintext)).toBe(false)
    expect(matches({ namespaces: ['*'] }, plaintext)).toBe(false)
    expect(matches({ serviceAccounts: ['*'] }, plaintext)).toBe(false)
    expect(matches({ notPrincipals: ['*'] }, plaintext)).toBe(true)
    expect(matches({ notNamespaces: ['web'] }, plaintext)).toBe(true)
  })

  it('a non-Kubernetes SPIFFE ID matches principals but no namespace or service account', () => {
    const vm = conn({ sourceIdentity: 'spiffe://example.org/vm/db' })
    expect(matches({ principals: ['example.org/vm/*'] }, vm)).toBe(true)
    expect(matches({ namespaces: ['*'] }, vm)).toBe(false)
  })
})

describe('rule structure', () => {
  const load = (rules: AuthorizationMatch[][][]) =>
    loadAuthorizationPolicy({ name: 'd', namespace: 'shop', scope: 'namespace', action: 'DENY', rules })
  const denied = (p: AuthorizationPolicy) => !evaluateAuthorization([p], conn()).allowed
  const yes: AuthorizationMatch = { namespaces: ['web'] }
  const no: AuthorizationMatch = { namespaces: ['other'] }

  it('a clause matches if ANY of its matches matches', () => {
    expect(denied(load([[[no, yes]]]))).toBe(true)
    expect(denied(load([[[no, no]]]))).toBe(false)
  })
  it('a rule matches if ALL its clauses match', () => {
    expect(denied(load([[[yes], [yes]]]))).toBe(true)
    expect(denied(load([[[yes], [no]]]))).toBe(false)
  })
  it('a policy matches if ANY rule matches', () => {
    expect(denied(load([[[no]], [[yes]]]))).toBe(true)
    expect(denied(load([[[no]], [[no]]]))).toBe(false)
  })
  it('an empty match matches every connection', () => {
    expect(denied(load([[[{}]]]))).toBe(true)
  })
  it('a policy with no rules never matches', () => {
    expect(denied(load([]))).toBe(false)
    const allowNothing = loadAuthorizationPolicy({ name: 'a', namespace: 'shop', scope: 'namespace', action: 'ALLOW', rules: [] })
    expect(evaluateAuthorization([allowNothing], conn())).toEqual({ allowed: false, reason: 'no-allow-policy-matched' })
  })
})

describe('evaluateAuthorization', () => {
  const allowFrontend = loadAuthorizationPolicy({
    name: 'allow-frontend', namespace: 'shop', scope: 'namespace', action: 'ALLOW',
    rules: [[[{ principals: ['cluster.local/ns/web/sa/frontend'] }]]],
  })
  const denyPort = loadAuthorizationPolicy({
    name: 'deny-admin-port', namespace: 'shop', scope: 'namespace', action: 'DENY',
    rules: [[[{ destinationPorts: [9090] }]]],
  })

  it('allows when no ALLOW policy applies to the destination', () => {
    expect(evaluateAuthorization([], conn())).toEqual({ allowed: true, reason: 'no-allow-policy-applies' })
    const elsewhere = loadAuthorizationPolicy({ ...allowFrontend, name: 'x', namespace: 'other' })
    expect(evaluateAuthorization([elsewhere, denyPort], conn())).toEqual({ allowed: true, reason: 'no-allow-policy-applies' })
  })

  it('allows with the matching ALLOW policy named, denies when none matches', () => {
    expect(evaluateAuthorization([allowFrontend], conn())).toEqual({ allowed: true, reason: 'allowed-by-policy', policy: allowFrontend })
    expect(evaluateAuthorization([allowFrontend], conn({ sourceIdentity: 'spiffe://cluster.local/ns/web/sa/other' }))).toEqual({
      allowed: false,
      reason: 'no-allow-policy-matched',
    })
  })

  it('DENY takes precedence over a matching ALLOW, whatever the order', () => {
    const c = conn({ destinationPort: 9090 })
    expect(evaluateAuthorization([allowFrontend, denyPort], c)).toEqual({ allowed: false, reason: 'denied-by-policy', policy: denyPort })
    expect(evaluateAuthorization([denyPort, allowFrontend], c)).toEqual({ allowed: false, reason: 'denied-by-policy', policy: denyPort })
  })

  it('scopes: global applies everywhere, namespace to its namespace, workload to selected labels', () => {
    const global = loadAuthorizationPolicy({ name: 'g', namespace: 'istio-system', scope: 'global', action: 'DENY', rules: [[[{}]]] })
    expect(evaluateAuthorization([global], conn()).allowed).toBe(false)
    const selected = loadAuthorizationPolicy({ name: 'w', namespace: 'shop', scope: 'workload', selector: { app: 'api' }, action: 'DENY', rules: [[[{}]]] })
    expect(evaluateAuthorization([selected], conn()).allowed).toBe(false)
    const unselected = loadAuthorizationPolicy({ ...selected, selector: { app: 'api', tier: 'frontend' } })
    expect(evaluateAuthorization([unselected], conn()).allowed).toBe(true)
    const otherNamespace = loadAuthorizationPolicy({ ...selected, namespace: 'web' })
    expect(evaluateAuthorization([otherNamespace], conn()).allowed).toBe(true)
  })

  it('workload scope by uid: applies to the listed workloads only, whatever their labels', () => {
    const listed = loadAuthorizationPolicy({ name: 'l', namespace: 'shop', scope: 'workload', workloads: ['pod-1'], action: 'DENY', rules: [[[{}]]] })
    const to = (uid: string | undefined): AuthorizationConnection => ({ ...conn(), destination: { ...conn().destination, ...(uid === undefined ? {} : { uid }) } })
    expect(evaluateAuthorization([listed], to('pod-1')).allowed).toBe(false)
    expect(evaluateAuthorization([listed], to('pod-2')).allowed).toBe(true)
    expect(evaluateAuthorization([listed], to(undefined)).allowed).toBe(true)
    const none = loadAuthorizationPolicy({ ...listed, workloads: [] })
    expect(evaluateAuthorization([none], to('pod-1')).allowed).toBe(true)
  })

  it('validates policies given as plain objects before evaluating them', () => {
    const raw = { name: 'raw', namespace: 'shop', scope: 'namespace', action: 'DENY', rules: [[[{ sourceIps: ['10.0.0.0/8'] }]]] } as AuthorizationPolicy
    expect(evaluateAuthorization([raw], conn())).toMatchObject({ allowed: false, reason: 'denied-by-policy' })
    const bad = { ...raw, rules: [[[{ sourceIps: ['10.0.0.0/40'] }]]] } as AuthorizationPolicy
    expect(() => evaluateAuthorization([bad], conn())).toThrow(/sourceIps\[0\]/)
  })
})

describe('loadAuthorizationPolicy rejects malformed policies, naming the field and value', () => {
  const base = { name: 'p', namespace: 'shop', scope: 'namespace', action: 'DENY' }
  const withMatch = (match: Record<string, unknown>) => ({ ...base, rules: [[[match]]] })

  it.each<[string, unknown, RegExp]>([
    ['unknown policy field', { ...base, rules: [], actions: 'DENY' }, /actions: expected no such field/],
    ['unknown match field', withMatch({ principal: ['x'] }), /rules\[0\]\[0\]\[0\]\.principal: expected no such match field/],
    ['invalid CIDR', withMatch({ sourceIps: ['10.0.0.0/33'] }), /sourceIps\[0\]: expected .*prefix length 0-32.*got "10.0.0.0\/33"/],
    ['garbage CIDR', withMatch({ destinationIps: ['10.0.0'] }), /destinationIps\[0\]: .*got "10.0.0"/],
    ['IPv6 prefix too long', withMatch({ sourceIps: ['2001:db8::/129'] }), /prefix length 0-128/],
    ['host bits set', withMatch({ sourceIps: ['10.0.0.1/8'] }), /did you mean 10.0.0.0\/8/],
    ['port out of range', withMatch({ destinationPorts: [0] }), /destinationPorts\[0\]: expected a port 1-65535, got 0/],
    ['port too large', withMatch({ notDestinationPorts: [65536] }), /notDestinationPorts\[0\]: expected a port 1-65535, got 65536/],
    ['port as string', withMatch({ destinationPorts: ['80'] }), /destinationPorts\[0\]: expected a port 1-65535, got "80"/],
    ['empty list', withMatch({ principals: [] }), /principals: expected a non-empty array/],
    ['empty value', withMatch({ namespaces: [''] }), /namespaces\[0\]: expected a non-empty string, got ""/],
    ['unsupported wildcard', withMatch({ principals: ['cluster.local/*/sa/x'] }), /principals\[0\]: expected an exact value, a prefix/],
    ['empty clause', { ...base, rules: [[[]]] }, /rules\[0\]\[0\]: expected a non-empty array of matches/],
    ['empty rule', { ...base, rules: [[]] }, /rules\[0\]: expected a non-empty array of clauses/],
    ['missing rules', { ...base }, /rules: expected an array/],
    ['bad action', { ...base, action: 'deny', rules: [] }, /action: expected "ALLOW" or "DENY", got "deny"/],
    ['bad scope', { ...base, scope: 'cluster', rules: [] }, /scope: expected "global", "namespace" or "workload"/],
    ['workload scope without selector', { ...base, scope: 'workload', rules: [] }, /selector: expected an object/],
    ['selector and workloads', { ...base, scope: 'workload', selector: { app: 'x' }, workloads: ['a'], rules: [] }, /selector: expected no selector beside "workloads"/],
    ['workloads outside workload scope', { ...base, workloads: ['a'], rules: [] }, /workloads: expected no workloads with scope "namespace"/],
    ['empty workload uid', { ...base, scope: 'workload', workloads: [''], rules: [] }, /workloads\[0\]: expected a non-empty workload uid/],
    ['selector outside workload scope', { ...base, selector: { app: 'x' }, rules: [] }, /selector: expected no selector with scope "namespace"/],
    ['not an object', 'DENY all', /policy: expected an object/],
  ])('%s', (_name, input, message) => {
    try {
      loadAuthorizationPolicy(input)
      expect.unreachable('should have thrown')
    } catch (err) {
      expect(isAmbientError(err, 'ERR_AMBIENT_INVALID_POLICY')).toBe(true)
      expect((err as Error).message).toMatch(message)
    }
  })

  it('returns frozen policies and accepts a loaded policy again unchanged', () => {
    const p = loadAuthorizationPolicy(withMatch({ sourceIps: ['10.0.0.0/8'] }))
    expect(Object.isFrozen(p)).toBe(true)
    expect(Object.isFrozen(p.rules[0]?.[0]?.[0])).toBe(true)
    expect(loadAuthorizationPolicy(p)).toBe(p)
  })
})

describe('createPolicyStore', () => {
  const p = (name: string, action: 'ALLOW' | 'DENY' = 'DENY') => ({ name, namespace: 'shop', scope: 'namespace', action, rules: [[[{}]]] })

  it('keeps policies by namespace and name and notifies subscribers of each change', () => {
    const store = createPolicyStore([p('a')])
    const seen: string[][] = []
    const unsubscribe = store.subscribe((change) => seen.push(change.policies.map((x) => `${x.name}:${x.action}`)))
    store.upsert(p('b'))
    store.upsert(p('a', 'ALLOW'))
    expect(store.remove('shop', 'b')).toBe(true)
    expect(store.remove('shop', 'b')).toBe(false)
    store.replaceAll([p('c')])
    unsubscribe()
    store.replaceAll([])
    expect(seen).toEqual([['a:DENY', 'b:DENY'], ['a:ALLOW', 'b:DENY'], ['a:ALLOW'], ['c:DENY']])
    expect(store.list()).toEqual([])
  })

  it('update() applies removals and upserts as one change, validated first', () => {
    const store = createPolicyStore([p('a'), p('b')])
    const seen: string[][] = []
    store.subscribe(({ policies }) => seen.push(policies.map((x) => `${x.name}:${x.action}`)))
    store.update({ remove: [{ namespace: 'shop', name: 'a' }, { namespace: 'shop', name: 'zz' }], upsert: [p('b', 'ALLOW'), p('c')] })
    expect(seen).toEqual([['b:ALLOW', 'c:DENY']])
    expect(() => store.update({ remove: [{ namespace: 'shop', name: 'b' }], upsert: [{ ...p('d'), rules: 1 }] })).toThrow(/rules: expected an array/)
    store.update({ remove: [{ namespace: 'shop', name: 'absent' }] })
    expect(seen).toHaveLength(1)
    expect(store.list().map((x) => x.name)).toEqual(['b', 'c'])
  })

  it('validates before changing anything', () => {
    const store = createPolicyStore([p('a')])
    expect(() => store.replaceAll([p('b'), { ...p('c'), rules: [[[{ sourceIps: ['nope'] }]]] }])).toThrow(/sourceIps\[0\]/)
    expect(() => store.upsert({ ...p('d'), extra: 1 })).toThrow(/extra: expected no such field/)
    expect(store.list().map((x) => x.name)).toEqual(['a'])
  })
})
