import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { wdsOptionsFromEnv, zdsOptionsFromEnv } from '../src/index'

describe('options from ztunnel\'s environment', () => {
  it('reads what a ztunnel DaemonSet sets', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ak-env-'))
    try {
      writeFileSync(join(dir, 'token'), 'jwt')
      expect(wdsOptionsFromEnv({
        KUBERNETES_SERVICE_HOST: '10.96.0.1',
        XDS_ROOT_CA: '/var/run/secrets/istio/root-cert.pem',
        ALT_XDS_HOSTNAME: 'istiod.example',
        AUTH_TOKEN: join(dir, 'token'),
        CLUSTER_ID: 'c1',
        ISTIO_META_CLUSTER_ID: 'c2',
        ISTIO_META_ISTIO_VERSION: '1.30.0',
        ISTIO_METAJSON_LABELS: '{"a":"b"}',
        XDS_HEADER_X_TENANT: 't1',
        INSTANCE_IP: '10.0.0.9',
        POD_NAME: 'ztunnel-x',
        POD_NAMESPACE: 'istio-system',
        NODE_NAME: 'node-1',
      })).toEqual({
        address: 'https://istiod.istio-system.svc:15012',
        rootCert: '/var/run/secrets/istio/root-cert.pem',
        altHostname: 'istiod.example',
        token: { file: join(dir, 'token') },
        clusterId: 'c2',
        headers: { x_tenant: 't1' },
        node: { ip: '10.0.0.9', podName: 'ztunnel-x', podNamespace: 'istio-system', nodeName: 'node-1', metadata: { CLUSTER_ID: 'c2', ISTIO_VERSION: '1.30.0', LABELS: { a: 'b' } } },
      })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('defaults like ztunnel outside Kubernetes, takes a token that is no file as the token, and XDS_ADDRESS="" as no xDS', () => {
    expect(wdsOptionsFromEnv({ AUTH_TOKEN: 'static-token' })).toMatchObject({ address: 'https://localhost:15012', token: { value: 'static-token' }, clusterId: 'Kubernetes' })
    expect(wdsOptionsFromEnv({ XDS_ADDRESS: '' })).toBeUndefined()
    expect(() => wdsOptionsFromEnv({ ISTIO_METAJSON_X: '{nope' })).toThrow(/ISTIO_METAJSON_X: expected JSON/)
  })

  it('ZDS: INPOD_UDS, NODE_NAME (required), the cluster id and trust domain', () => {
    expect(zdsOptionsFromEnv({ NODE_NAME: 'n1', INPOD_UDS: '/tmp/z.sock', CLUSTER_ID: 'c1', TRUST_DOMAIN: 'example.org' })).toEqual({ nodeName: 'n1', path: '/tmp/z.sock', clusterId: 'c1', trustDomain: 'example.org' })
    expect(() => zdsOptionsFromEnv({})).toThrow(/NODE_NAME/)
  })
})
