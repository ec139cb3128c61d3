import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import fc from 'fast-check'
import { afterAll, describe, expect, it } from 'vitest'
import { stringify } from 'yaml'
import { SpiffeId } from '@ambientkit/identity'
import { INVALID_MESH_CONFIG, loadMeshConfig, podWorkload, serviceEntry } from '../src/config'
import { checkProperty, fuzzTimeout, parseOrRefuse } from '../../../test/support/fuzz'

// mesh.yaml: files generated from the schema docs/configuration.md gives,
// written as YAML and loaded; then the same files mutated as text, and YAML
// built to hurt a parser (alias bombs, deep nesting, tags).

const dir = mkdtempSync(join(tmpdir(), 'ak-mesh-fuzz-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
let files = 0
const load = (text: string): ReturnType<typeof loadMeshConfig> => {
  const file = join(dir, `mesh-${files++ % 4}.yaml`)
  writeFileSync(file, text)
  return loadMeshConfig(file)
}

const name = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789-'), minLength: 1, maxLength: 32 }).filter((n) => /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(n))
const trustDomain = fc.oneof(
  fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789._-'), minLength: 1, maxLength: 40 }),
  fc.integer({ min: 250, max: 260 }).map((n) => 't'.repeat(n)),
)

const meshArb = fc
  .record({
    trustDomain: fc.option(trustDomain, { nil: undefined }),
    subnets: fc.uniqueArray(fc.integer({ min: 0, max: 254 }).filter((n) => n !== 100), { minLength: 1, maxLength: 9 }),
    nodeNames: fc.uniqueArray(name, { minLength: 9, maxLength: 9 }),
    pods: fc.uniqueArray(fc.record({ node: fc.nat(), host: fc.integer({ min: 2, max: 254 }), name, namespace: name, serviceAccount: fc.option(name, { nil: undefined }), mesh: fc.option(fc.boolean(), { nil: undefined }), port: fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }) }), { minLength: 1, maxLength: 6, selector: (p) => `${p.namespace}/${p.name}` }),
    services: fc.uniqueArray(fc.record({ name, namespace: name, host: fc.integer({ min: 0, max: 255 }), port: fc.integer({ min: 1, max: 65535 }), target: fc.integer({ min: 1, max: 65535 }), app: name }), { maxLength: 3, selector: (s) => s.host }),
    policies: fc.uniqueArray(fc.record({ name, namespace: name, action: fc.constantFrom('ALLOW', 'DENY'), serviceAccounts: fc.array(name, { minLength: 1, maxLength: 2 }), ports: fc.array(fc.integer({ min: 1, max: 65535 }), { minLength: 1, maxLength: 2 }) }), { maxLength: 3, selector: (p) => `${p.namespace}/${p.name}` }),
    dataPath: fc.option(fc.constantFrom('native', 'node'), { nil: undefined }),
  })
  .map((r) => {
    const nodes = r.subnets.map((subnet, i) => ({ name: r.nodeNames[i]!, podCidr: `10.44.${subnet}.0/24` }))
    const seen = new Set<string>()
    const pods = r.pods
      .map((p) => ({ ...p, node: nodes[p.node % nodes.length]! }))
      .filter((p) => !seen.has(`${p.node.podCidr}.${p.host}`) && seen.add(`${p.node.podCidr}.${p.host}`))
      .map(({ node, host, serviceAccount, mesh, port, ...p }) => ({
        ...p, node: node.name, ip: node.podCidr.replace(/0\/24$/, String(host)),
        ...(serviceAccount === undefined ? {} : { serviceAccount }), ...(mesh === undefined ? {} : { mesh }), ...(port === undefined ? {} : { port }),
      }))
    return {
      ...(r.trustDomain === undefined ? {} : { trustDomain: r.trustDomain }),
      ...(r.dataPath === undefined ? {} : { proxy: { dataPath: r.dataPath } }),
      nodes,
      pods,
      services: r.services.map((s) => ({ name: s.name, namespace: s.namespace, vip: `10.44.100.${s.host}`, ports: { [s.port]: s.target }, selector: { app: s.app } })),
      // The YAML shorthand: a rule may be one match object.
      policies: r.policies.map((p) => ({ name: p.name, namespace: p.namespace, scope: 'namespace', action: p.action, rules: [{ serviceAccounts: p.serviceAccounts, destinationPorts: p.ports }] })),
    }
  })

const CODES = [INVALID_MESH_CONFIG]

describe('mesh.yaml fuzzing', () => {
  it('loads every file the schema allows, and what it accepts the mesh can run (identities, workloads, services)', async () => {
    await checkProperty('local-mesh: loadMeshConfig (schema grammar)', fc.property(meshArb, (mesh) => {
      const result = parseOrRefuse(CODES, () => load(stringify(mesh)))
      const td = mesh.trustDomain ?? 'cluster.local'
      // The SPIFFE ID of every pod must be valid (SPIFFE-ID §2.3 bounds the trust domain to 255 bytes).
      const runnable = td.length <= 255
      expect(result.ok, result.ok ? '' : `refused: ${JSON.stringify(mesh).slice(0, 200)}`).toBe(runnable)
      if (!result.ok) return
      const config = result.value
      expect(config.pods.map((p) => p.ip)).toEqual(mesh.pods.map((p) => p.ip))
      for (const pod of config.pods) {
        SpiffeId.fromServiceAccount(config.trustDomain, pod.namespace, pod.serviceAccount)
        podWorkload(pod, config.trustDomain)
      }
      for (const service of config.services) serviceEntry(service, config.pods, config.trustDomain)
    }), 200)
  }, fuzzTimeout(30_000))

  it('refuses mutated files and hostile YAML with ERR_AMBIENT_LOCAL_MESH_CONFIG only', async () => {
    const example = readFileSync(fileURLToPath(new URL('../mesh.yaml', import.meta.url)), 'utf8')
    const text = fc.oneof(
      fc.tuple(fc.constantFrom(example), fc.array(fc.tuple(fc.nat(), fc.nat({ max: 2 }), fc.constantFrom(...':-[]{}&*!|>\'"#%@` \n\t0aZ,?')), { minLength: 1, maxLength: 4 })).map(([base, edits]) => {
        let s = base
        for (const [at, kind, c] of edits) {
          const i = at % (s.length + 1)
          s = kind === 0 ? s.slice(0, i) + c + s.slice(i) : kind === 1 ? s.slice(0, i) + c + s.slice(i + 1) : s.slice(0, i) + s.slice(i + 1)
        }
        return s
      }),
      meshArb.map((mesh) => stringify(mesh)).chain((s) => fc.nat({ max: s.length }).map((n) => s.slice(0, n))),
      // An alias bomb: each level doubles the size of the document once its aliases are expanded.
      fc.integer({ min: 1, max: 30 }).map((levels) => ['a0: &a0 [x, x]', ...Array.from({ length: levels }, (_, i) => `a${i + 1}: &a${i + 1} [*a${i}, *a${i}]`), `nodes: *a${levels}`].join('\n')),
      fc.integer({ min: 1, max: 2000 }).map((depth) => `nodes: ${'['.repeat(depth)}${']'.repeat(depth)}`),
      fc.constantFrom('!!binary aGVsbG8=', 'nodes: !!set {a, b}', 'pods: !!omap [a: 1]', '? [complex, key]\n: value', 'nodes: !custom 1', '%YAML 1.1\n---\nnodes: [yes]', '<<: {nodes: []}'),
      fc.string({ maxLength: 100 }),
    )
    await checkProperty('local-mesh: loadMeshConfig (mutated and hostile YAML)', fc.property(text, (yaml) => {
      parseOrRefuse(CODES, () => load(yaml))
    }), 300)
  }, fuzzTimeout(60_000))
})
