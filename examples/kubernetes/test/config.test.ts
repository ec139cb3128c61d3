import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { parse } from 'yaml'
import { loadNodeConfig } from '../src/config'

const configMap = parse(readFileSync(new URL('../manifests/03-configmap.yaml', import.meta.url), 'utf8')) as { data: Record<string, string> }

describe('loadNodeConfig', () => {
  it('reads the ConfigMap shipped with the manifests and the DaemonSet environment', () => {
    const config = loadNodeConfig(configMap.data['mesh.yaml']!, { NODE_NAME: 'node-a', ADMIN_ADDRESS: '0.0.0.0:15021', METRICS_ADDRESS: '0.0.0.0:15020' })
    expect(config).toMatchObject({
      nodeName: 'node-a',
      trustDomain: 'cluster.local',
      svidTtlSeconds: 3600,
      outboundPolicy: 'passthrough',
      inboundPlaintext: 'permissive',
      sameNodeFastPath: false,
      policiesFile: '/etc/ambientkit/policies.yaml',
      caAddress: 'ambientkit-control-plane.ambientkit-system.svc:15012',
      adminAddress: { address: '0.0.0.0', port: 15021 },
      metricsAddress: { address: '0.0.0.0', port: 15020 },
    })
  })

  it.each([
    ['trustDomain: Cluster.Local', /trustDomain: expected a trust domain/],
    [`trustDomain: ${'t'.repeat(256)}`, /trustDomain: expected a trust domain of \[a-z0-9._-\], at most 255 characters/],
    ['svidTtlSeconds: 5', /svidTtlSeconds: expected an integer number of seconds, at least 60, got 5/],
    ['proxy: { outboundPolicy: drop }', /proxy.outboundPolicy: expected "passthrough" or "refuse", got "drop"/],
    ['proxy: { strict: true }', /proxy.strict: expected no such key/],
    ['proxy: { sameNodeFastPath: yes please }', /proxy.sameNodeFastPath: expected true or false, got "yes please"/],
    ['trustdomain: cluster.local', /mesh.yaml: trustdomain: expected no such key/],
    ['caAddress: istiod.istio-system.svc', /caAddress: expected host:port of the CA service/],
    ['caDir: /etc/ambientkit/ca', /mesh.yaml: caDir: expected no such key/],
  ])('refuses %j', (yaml, message) => {
    expect(() => loadNodeConfig(yaml, { NODE_NAME: 'n' })).toThrow(message)
  })

  it('needs the node name and a valid admin address', () => {
    expect(() => loadNodeConfig('{}', {})).toThrow(/NODE_NAME: expected the node name/)
    expect(() => loadNodeConfig('{}', { NODE_NAME: 'n', ADMIN_ADDRESS: 'localhost:15021' })).toThrow(/ADMIN_ADDRESS: not an IPv4 address/)
  })
})
