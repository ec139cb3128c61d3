import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { TrustBundle, createCertificateAuthority, createTrustBundleSet } from '@ambientkit/identity'
import { CaErrorCode, createBundleEndpointServer, fetchBundleEndpoint } from '@ambientkit/ca'

const dir = mkdtempSync(join(tmpdir(), 'ak-bundle-ep-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('SPIFFE bundle endpoint (https_web)', () => {
  it('serves the bundle as it changes, with an increasing sequence, to curl and to fetchBundleEndpoint', async () => {
    const oldCa = await createCertificateAuthority({ trustDomain: 'cluster.local' })
    const newCa = await createCertificateAuthority({ trustDomain: 'cluster.local' })
    const web = await oldCa.issue('spiffe://cluster.local/ns/ambientkit-system/sa/control-plane', { dnsNames: ['localhost'] })
    const bundles = createTrustBundleSet([oldCa.bundle])
    const endpoint = await createBundleEndpointServer({ bundles, trustDomain: 'cluster.local', listen: { host: '127.0.0.1', port: 0 }, certificate: { key: web.privateKeyPem, cert: web.certificateChainPem } })
    const { port } = endpoint.address() as { port: number }
    const url = `https://localhost:${port}/`
    writeFileSync(join(dir, 'web-roots.pem'), oldCa.bundle.x509AuthoritiesPem())
    try {
      // A client we did not write, with the ordinary Web PKI checks (host name, chain).
      const first = JSON.parse((await promisify(execFile)('curl', ['-sS', '--fail', '--cacert', join(dir, 'web-roots.pem'), url])).stdout) as { keys: unknown[]; spiffe_sequence: number; spiffe_refresh_hint: number }
      expect(first.keys).toHaveLength(1)
      expect(first.spiffe_refresh_hint).toBe(300)
      bundles.set(TrustBundle.create({ trustDomain: 'cluster.local', x509Authorities: [oldCa.certificate, newCa.certificate] }))
      const second = await fetchBundleEndpoint(url, { trustDomain: 'cluster.local', ca: oldCa.bundle.x509AuthoritiesPem() })
      expect(second.x509Authorities.map((c) => c.fingerprint256)).toEqual([oldCa.certificate.fingerprint256, newCa.certificate.fingerprint256])
      expect(second.sequenceNumber).toBeGreaterThan(first.spiffe_sequence)
      // https_web: a certificate for another host name is refused.
      await expect(fetchBundleEndpoint(`https://127.0.0.1:${port}/`, { trustDomain: 'cluster.local', ca: oldCa.bundle.x509AuthoritiesPem() })).rejects.toMatchObject({ code: CaErrorCode.BundleEndpoint })
    } finally {
      await endpoint.close()
    }
  })
})
