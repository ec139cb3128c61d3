import { execFileSync, spawn } from 'node:child_process'
import { createPrivateKey } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { SpiffeId, createCertificateAuthority, createIdentityManager, type X509Svid } from '@ambientkit/identity'
import { createWorkloadApiSource, workloadApiTarget } from '@ambientkit/workload-api'

const dir = mkdtempSync(join(tmpdir(), 'ak-wl-client-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
const API = SpiffeId.parse('spiffe://example.org/ns/shop/sa/api')

const der = (pem: string): string =>
  Buffer.concat((pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []).map((b) => Buffer.from(b.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64'))).toString('base64')

describe('Workload API client source', () => {
  it('takes SVIDs and renewals from a Workload API server on another stack (Python grpcio, as a SPIRE agent)', async () => {
    const ca = await createCertificateAuthority({ trustDomain: 'example.org' })
    const svids: X509Svid[] = [await ca.issue(API, { ttlSeconds: 600 }), await ca.issue(API, { ttlSeconds: 900 })]
    const entry = (s: X509Svid): Record<string, string> => ({
      spiffe_id: s.id.toString(),
      x509_svid: der(s.certificateChainPem),
      x509_svid_key: createPrivateKey(s.privateKeyPem).export({ type: 'pkcs8', format: 'der' }).toString('base64'),
      bundle: der(ca.bundle.x509AuthoritiesPem()),
    })
    writeFileSync(join(dir, 'messages.json'), JSON.stringify(svids.map((s) => [entry(s)])))
    execFileSync('protoc', [`-I${fileURLToPath(new URL('../proto/', import.meta.url))}`, '-I/usr/include', `--python_out=${dir}`, 'workloadapi.proto'])
    const socket = join(dir, 'agent.sock')
    const agent = spawn('/usr/bin/python3', [fileURLToPath(new URL('./python/fake_spire_agent.py', import.meta.url)), dir, socket, join(dir, 'messages.json')], { stdio: ['pipe', 'pipe', 'inherit'] })
    try {
      await once(createInterface({ input: agent.stdout! }), 'line')
      const source = createWorkloadApiSource({ address: `unix://${socket}` })
      const manager = createIdentityManager({ source })
      const first = await manager.get(API)
      expect(first.certificateChainPem).toBe(svids[0]!.certificateChainPem)
      expect(createPrivateKey(first.privateKeyPem).export({ type: 'pkcs8', format: 'pem' })).toBe(createPrivateKey(svids[0]!.privateKeyPem).export({ type: 'pkcs8', format: 'pem' }))
      expect(source.bundles.get('example.org')!.x509AuthoritiesPem()).toBe(ca.bundle.x509AuthoritiesPem())
      const renewal = new Promise<X509Svid>((resolve) => manager.subscribe((e) => e.type === 'rotated' && resolve(e.svid)))
      agent.stdin!.write('next\n')
      expect((await renewal).certificateChainPem).toBe(svids[1]!.certificateChainPem)
      await manager.close()
    } finally {
      agent.kill()
    }
  })

  it('accepts only the addresses go-spiffe accepts', () => {
    expect(workloadApiTarget('unix:///run/spire/agent.sock')).toBe('unix:///run/spire/agent.sock')
    expect(workloadApiTarget('tcp://127.0.0.1:8081')).toBe('127.0.0.1:8081')
    for (const bad of ['unix://host/path', 'unix:relative', 'tcp://localhost:8081', 'tcp://127.0.0.1', 'http://127.0.0.1:1', 'unix:///p?x=1', '']) {
      expect(() => workloadApiTarget(bad), bad).toThrow(/address/)
    }
  })
})
