// The node agent reads ztunnel's environment: the DaemonSet's variables,
// with ztunnel's defaults for what it leaves out.
import { describe, expect, it } from 'vitest'
import { istioNodeConfig } from '../src/config'

describe('istioNodeConfig', () => {
  it("takes ztunnel's variables, with ztunnel's defaults and ports", () => {
    const config = istioNodeConfig({ NODE_NAME: 'node-1', KUBERNETES_SERVICE_HOST: '10.96.0.1' })
    expect(config).toMatchObject({
      nodeName: 'node-1',
      trustDomain: 'cluster.local',
      clusterId: 'Kubernetes',
      wds: { address: 'https://istiod.istio-system.svc:15012' },
      zds: { nodeName: 'node-1' },
      ca: { address: 'https://istiod.istio-system.svc:15012', rootCertFile: './var/run/secrets/istio/root-cert.pem', tokenFile: './var/run/secrets/tokens/istio-token' },
      addresses: {
        status: { address: '0.0.0.0', port: 15021 },
        stats: { address: '0.0.0.0', port: 15020 },
        admin: { address: '127.0.0.1', port: 15000 },
      },
    })
    const custom = istioNodeConfig({
      NODE_NAME: 'node-2',
      TRUST_DOMAIN: 'example.org',
      CLUSTER_ID: 'east',
      CA_ADDRESS: 'istiod.istio-system.svc:15012',
      CA_ROOT_CA: '/etc/ca.pem',
      AUTH_TOKEN: '/etc/token',
      INPOD_UDS: '/run/z.sock',
      XDS_ADDRESS: '',
      AMBIENTKIT_STATUS_ADDRESS: '127.0.0.1:0',
    })
    expect(custom).toMatchObject({ trustDomain: 'example.org', clusterId: 'east', wds: undefined, zds: { path: '/run/z.sock', clusterId: 'east', trustDomain: 'example.org' } })
    expect(custom.ca).toEqual({ address: 'istiod.istio-system.svc:15012', rootCertFile: '/etc/ca.pem', tokenFile: '/etc/token' })
    expect(custom.addresses.status).toEqual({ address: '127.0.0.1', port: 0, family: 4 })
  })

  it('names the variable that is missing or wrong', () => {
    expect(() => istioNodeConfig({})).toThrow(/NODE_NAME/)
    expect(() => istioNodeConfig({ NODE_NAME: 'n', AMBIENTKIT_STATS_ADDRESS: 'localhost:15020' })).toThrow(/AMBIENTKIT_STATS_ADDRESS: expected an ip:port address/)
  })
})
