import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { loadMeshConfig, serviceEntry, validateMeshConfig } from '../src/config'

const base = {
  nodes: [{ name: 'node-1', podCidr: '10.44.1.0/24' }],
  pods: [{ name: 'api', namespace: 'shop', serviceAccount: 'api', node: 'node-1', ip: '10.44.1.2' }],
}

function errorOf(input: unknown): string {
  try {
    validateMeshConfig(input)
  } catch (err) {
    return (err as Error).message
  }
  throw new Error('expected the config to be refused')
}

describe('mesh.yaml validation', () => {
  it('loads the example mesh.yaml with its defaults filled in', () => {
    const config = loadMeshConfig(fileURLToPath(new URL('../mesh.yaml', import.meta.url)))
    expect(config.nodes.map((n) => [n.name, n.gateway])).toEqual([['node-1', '10.44.1.1'], ['node-2', '10.44.2.1']])
    expect(config.pods.filter((p) => !p.mesh).map((p) => p.name)).toEqual(['monitor'])
    expect(config.pods.find((p) => p.name === 'frontend')).toMatchObject({ port: 8080, labels: { app: 'frontend' } })
    expect(config.policies.map((p) => `${p.namespace}/${p.name}`)).toContain('shop/api-deny-billing')
    // The one-match shorthand becomes core's rule form: one clause with one match.
    expect(config.policies.find((p) => p.name === 'api-allow-frontend')!.rules).toEqual([[[{ serviceAccounts: ['frontend'] }]]])
    expect(serviceEntry(config.services[0]!, config.pods, config.trustDomain)).toMatchObject({ hostname: 'api.shop.svc.cluster.local', endpoints: ['shop.api'] })
  })

  it.each([
    [{ ...base, nodes: [{ name: 'node-1', podCidr: '10.200.1.0/24' }] }, 'nodes[0].podCidr: expected an address inside 10.44.0.0/16'],
    [{ ...base, pods: [{ ...base.pods[0], node: 'node-9' }] }, 'pods[0].node: expected one of node-1, got "node-9"'],
    [{ ...base, pods: [{ ...base.pods[0], ip: '10.44.2.2' }] }, 'pods[0].ip: expected an address in 10.44.1.0/24'],
    [{ ...base, pods: [base.pods[0], { ...base.pods[0], name: 'api2' }] }, 'pods[1].ip: expected a ip no other entry has'],
    [{ ...base, pods: [{ ...base.pods[0], mesh: 'yes' }] }, 'pods[0].mesh: expected true'],
    [{ ...base, pods: [{ ...base.pods[0], colour: 'red' }] }, 'pods[0].colour: expected no such field'],
    [{ ...base, services: [{ name: 'api', namespace: 'shop', vip: '10.44.1.10', ports: { 80: 8080 }, selector: { app: 'api' } }] }, 'services[0].vip: expected a VIP in 10.44.100.0/24'],
    [{ ...base, policies: [{ name: 'p', namespace: 'shop', scope: 'namespace', action: 'MAYBE', rules: [] }] }, 'policies[0]: authorization policy shop/p: action: expected "ALLOW" or "DENY"'],
    [{ ...base, proxy: { inboundPlaintext: 'lenient' } }, 'proxy.inboundPlaintext: expected "permissive" or "strict"'],
    [{ ...base, proxy: { dataPath: 'kernel' } }, 'proxy.dataPath: expected "native" or "node", got "kernel"'],
    [{ ...base, capture: { outboundPort: 0 } }, 'mesh config capture: capture config outboundPort: expected a port 1-65535'],
  ])('refuses a bad field and names it (%#)', (input, message) => {
    expect(errorOf(input)).toContain(message)
  })

  it('names the line of a YAML syntax error, and a file it cannot read', () => {
    const dir = mkdtempSync(join(tmpdir(), 'akm-config-'))
    try {
      const file = join(dir, 'mesh.yaml')
      writeFileSync(file, 'nodes:\n  - name: node-1\n    podCidr: [10.44.1.0/24\n')
      expect(() => loadMeshConfig(file)).toThrow(/not valid YAML.*line \d+/s)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
    expect(() => loadMeshConfig('/nonexistent/mesh.yaml')).toThrow(/cannot read mesh config/)
  })

  // Found by fuzzing: the yaml library throws a ReferenceError on an alias bomb, which escaped as is.
  it('refuses an alias bomb with the config error code', () => {
    const dir = mkdtempSync(join(tmpdir(), 'akm-config-'))
    try {
      const file = join(dir, 'mesh.yaml')
      writeFileSync(file, ['a0: &a0 [x, x]', ...Array.from({ length: 8 }, (_, i) => `a${i + 1}: &a${i + 1} [*a${i}, *a${i}]`), 'nodes: *a8'].join('\n'))
      expect(() => loadMeshConfig(file)).toThrow(expect.objectContaining({ code: 'ERR_AMBIENT_LOCAL_MESH_CONFIG', message: expect.stringMatching(/cannot be read: Excessive alias count/) }))
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  // Found by fuzzing: a trust domain the SPIFFE-ID spec refuses (over 255 bytes) was accepted, and every SVID then failed.
  it('refuses a trust domain longer than 255 characters (SPIFFE-ID §2.3)', () => {
    expect(errorOf({ ...base, trustDomain: 't'.repeat(256) })).toContain('trustDomain: expected a trust domain of [a-z0-9._-], at most 255 characters')
    expect(validateMeshConfig({ ...base, trustDomain: 't'.repeat(255) }).trustDomain).toHaveLength(255)
  })
})
