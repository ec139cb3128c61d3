import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { X509Certificate, generateKeyPairSync } from 'node:crypto'
import { afterAll, describe, expect, it } from 'vitest'
import { isAmbientError } from '@ambientkit/core'
import {
  IdentityErrorCode, SpiffeId, createCertificateAuthority, createCsr, loadCertificateAuthority, verifyX509Svid, type KeyType,
} from '@ambientkit/identity'
import { parseCertificate } from '../src/certificate'

const dir = mkdtempSync(join(tmpdir(), 'ak-id-ca-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

function opensslVerify(caPem: string, chainPem: string, purpose: string): string {
  const caFile = join(dir, `ca-${purpose}.pem`)
  const leafFile = join(dir, `leaf-${purpose}.pem`)
  writeFileSync(caFile, caPem)
  writeFileSync(leafFile, chainPem)
  return execFileSync('openssl', ['verify', '-x509_strict', '-purpose', purpose, '-CAfile', caFile, leafFile], { encoding: 'utf8' })
}

const keyTypes: KeyType[] = ['ecdsa-p256', 'rsa-2048']

describe.each(keyTypes)('certificate authority (%s)', (keyType) => {
  const id = SpiffeId.fromServiceAccount('example.org', 'shop', 'api')
  const caPromise = createCertificateAuthority({ trustDomain: 'example.org', keyType })

  it('issues SVIDs that openssl verifies for sslclient and sslserver', async () => {
    const ca = await caPromise
    const svid = await ca.issue(id, { ttlSeconds: 600 })
    const caPem = ca.save().certificateChainPem
    expect(opensslVerify(caPem, svid.certificateChainPem, 'sslclient')).toMatch(/: OK/)
    expect(opensslVerify(caPem, svid.certificateChainPem, 'sslserver')).toMatch(/: OK/)
  })

  it('builds leaves per the X509-SVID spec', async () => {
    const ca = await caPromise
    const before = Date.now()
    const svid = await ca.issue(id, { ttlSeconds: 600 })
    const leaf = parseCertificate(new X509Certificate(svid.certificateChainPem).raw)
    expect(leaf.uris).toEqual([id.toString()])
    expect(leaf.subjectEmpty).toBe(true)
    expect(leaf.sanCritical).toBe(true)
    expect(leaf.cA).toBe(false)
    expect([...leaf.keyUsage!].sort()).toEqual(keyType === 'rsa-2048' ? [0, 2] : [0])
    const text = execFileSync('openssl', ['x509', '-noout', '-ext', 'keyUsage,extendedKeyUsage,basicConstraints'], { input: svid.certificateChainPem, encoding: 'utf8' })
    expect(text).toMatch(/Key Usage: critical/)
    expect(text).toMatch(/TLS Web Server Authentication, TLS Web Client Authentication/)
    expect(text).toMatch(/Basic Constraints: critical\s+CA:FALSE/)
    // Backdated a few seconds, lifetime as asked.
    expect(svid.notBefore.getTime()).toBeLessThan(before)
    expect(before - svid.notBefore.getTime()).toBeLessThanOrEqual(11_000)
    expect(svid.notAfter.getTime() - svid.notBefore.getTime()).toBeGreaterThanOrEqual(600_000)
    expect(svid.id.equals(id)).toBe(true)
    expect(verifyX509Svid(svid.certificateChainPem, ca.bundle).equals(id)).toBe(true)
  })

  it('makes CA certificates with cA=true, keyCertSign, cRLSign and the trust domain URI SAN', async () => {
    const ca = await caPromise
    const root = parseCertificate(ca.certificate.raw)
    expect(root.cA).toBe(true)
    expect([...root.keyUsage!].sort()).toEqual([5, 6])
    expect(root.uris).toEqual(['spiffe://example.org'])
    expect(ca.keyType).toBe(keyType)
  })

  it('saves and loads the CA as PEM', async () => {
    const ca = await caPromise
    const loaded = loadCertificateAuthority(ca.save())
    expect(loaded.trustDomain.name).toBe('example.org')
    const svid = await loaded.issue(id)
    expect(verifyX509Svid(svid.certificateChainPem, ca.bundle).toString()).toBe(id.toString())
  })

  it('signs a CSR for the ID it names and refuses others', async () => {
    const ca = await caPromise
    const { privateKey } = keyType === 'rsa-2048'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    const csr = createCsr({ id, privateKey })
    expect(execFileSync('openssl', ['req', '-verify', '-noout'], { input: csr, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] })).toBe('')
    const signed = await ca.signCsr(csr, { id, ttlSeconds: 300 })
    const leaf = new X509Certificate(signed.certificateChainPem)
    expect(leaf.checkPrivateKey(privateKey)).toBe(true)
    expect(opensslVerify(ca.save().certificateChainPem, signed.certificateChainPem, 'sslclient')).toMatch(/: OK/)
    const other = SpiffeId.fromServiceAccount('example.org', 'shop', 'db')
    await expect(ca.signCsr(csr, { id: other })).rejects.toMatchObject({ code: IdentityErrorCode.CsrRejected, message: expect.stringMatching(/not exactly the requested ID/) })
  })
})

describe('certificate authority', () => {
  it('never issues beyond its own expiry', async () => {
    const ca = await createCertificateAuthority({ trustDomain: 'short.example', ttlSeconds: 120 })
    const svid = await ca.issue('spiffe://short.example/w', { ttlSeconds: 3600 })
    expect(svid.notAfter.getTime()).toBeLessThanOrEqual(ca.notAfter.getTime())
  })

  it('refuses IDs of another trust domain and the bare trust domain ID', async () => {
    const ca = await createCertificateAuthority({ trustDomain: 'a.example' })
    await expect(ca.issue('spiffe://b.example/w')).rejects.toThrow(/trust domain a\.example/)
    await expect(ca.issue('spiffe://a.example')).rejects.toThrow(/with a path/)
  })

  it('refuses a CSR whose signature is invalid', async () => {
    const ca = await createCertificateAuthority({ trustDomain: 'example.org' })
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    const csr = createCsr({ id: 'spiffe://example.org/w', privateKey })
    const der = Buffer.from(csr.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64')
    der[der.length - 5]! ^= 0x01
    const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`
    const error = await ca.signCsr(tampered, { id: 'spiffe://example.org/w' }).catch((err: unknown) => err)
    expect(isAmbientError(error, IdentityErrorCode.CsrRejected)).toBe(true)
    expect((error as Error).message).toMatch(/signature does not verify/)
  })

  it('refuses a CSR with no or several URI SANs', async () => {
    const ca = await createCertificateAuthority({ trustDomain: 'example.org' })
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    const keyFile = join(dir, 'csr.key')
    writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }))
    const csr = execFileSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/CN=x', '-addext', 'subjectAltName=URI:spiffe://example.org/w,URI:spiffe://example.org/v'], { encoding: 'utf8' })
    await expect(ca.signCsr(csr, { id: 'spiffe://example.org/w' })).rejects.toMatchObject({ code: IdentityErrorCode.CsrRejected })
    const none = execFileSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/CN=x'], { encoding: 'utf8' })
    await expect(ca.signCsr(none, { id: 'spiffe://example.org/w' })).rejects.toMatchObject({ code: IdentityErrorCode.CsrRejected })
  })

  it('loads an intermediate CA and issues chains that verify to the root', async () => {
    // An intermediate made by openssl from our root: a CA we did not create ourselves.
    const root = await createCertificateAuthority({ trustDomain: 'example.org' })
    const rootPem = root.save()
    writeFileSync(join(dir, 'root.pem'), rootPem.certificateChainPem)
    writeFileSync(join(dir, 'root.key'), rootPem.privateKeyPem)
    writeFileSync(join(dir, 'ext.cnf'), 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectAltName=URI:spiffe://example.org\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n')
    execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'int.key'), '-subj', '/O=ambientkit/CN=intermediate', '-out', join(dir, 'int.csr')], { stdio: 'ignore' })
    execFileSync('openssl', ['x509', '-req', '-in', join(dir, 'int.csr'), '-CA', join(dir, 'root.pem'), '-CAkey', join(dir, 'root.key'), '-CAcreateserial', '-days', '30', '-extfile', join(dir, 'ext.cnf'), '-out', join(dir, 'int.pem')], { stdio: 'ignore' })
    const intermediate = loadCertificateAuthority({
      certificateChainPem: readFileSync(join(dir, 'int.pem'), 'utf8') + rootPem.certificateChainPem,
      privateKeyPem: readFileSync(join(dir, 'int.key'), 'utf8'),
    })
    expect(intermediate.bundle.x509Authorities[0]!.raw.equals(root.certificate.raw)).toBe(true)
    const svid = await intermediate.issue('spiffe://example.org/w', { ttlSeconds: 60 })
    expect(svid.certificateChainPem.match(/BEGIN CERTIFICATE/g)).toHaveLength(2)
    expect(verifyX509Svid(svid.certificateChainPem, root.bundle).toString()).toBe('spiffe://example.org/w')
    const [leafPem, intermediatePem] = svid.certificateChainPem.split(/(?<=-----END CERTIFICATE-----\n)/)
    writeFileSync(join(dir, 'untrusted.pem'), intermediatePem!)
    writeFileSync(join(dir, 'leaf.pem'), leafPem!)
    expect(execFileSync('openssl', ['verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', join(dir, 'root.pem'), '-untrusted', join(dir, 'untrusted.pem'), join(dir, 'leaf.pem')], { encoding: 'utf8' })).toMatch(/: OK/)
  })

  it('refuses to load a key that does not match the certificate', async () => {
    const a = await createCertificateAuthority({ trustDomain: 'example.org' })
    const b = await createCertificateAuthority({ trustDomain: 'example.org' })
    expect(() => loadCertificateAuthority({ certificateChainPem: a.save().certificateChainPem, privateKeyPem: b.save().privateKeyPem }))
      .toThrow(/does not match/)
  })

  describe('key policy (issue 15: any RSA key was treated as 2048-bit)', () => {
    const opensslCsr = (keyArgs: string[], extra: string[] = []): string => {
      const keyFile = join(dir, `policy-${keyArgs.join('-').replace(/[^a-z0-9-]/gi, '')}.key`)
      execFileSync('openssl', ['genpkey', ...keyArgs, '-out', keyFile], { stdio: 'ignore' })
      return execFileSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/', '-addext', 'subjectAltName=URI:spiffe://example.org/w', ...extra], { encoding: 'utf8' })
    }
    const caPromise = createCertificateAuthority({ trustDomain: 'example.org' })

    it.each([
      ['RSA-512', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:512']],
      ['RSA-1024', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024']],
      ['RSA-2047', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2047']],
      ['ECDSA P-521', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-521']],
      ['ECDSA secp256k1', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:secp256k1']],
      ['ed25519', ['-algorithm', 'ED25519']],
    ])('refuses a CSR whose key is %s, naming it and the policy', async (text, keyArgs) => {
      const ca = await caPromise
      const csr = opensslCsr(keyArgs)
      const error = await ca.signCsr(csr, { id: 'spiffe://example.org/w' }).catch((err: unknown) => err)
      expect(isAmbientError(error, IdentityErrorCode.CsrRejected)).toBe(true)
      expect((error as Error).message).toContain(`its key is ${text}`)
      expect((error as Error).message).toContain('ECDSA P-256, ECDSA P-384, RSA of 2048 to 8192 bits')
    })

    it.each([
      ['ECDSA P-384', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384'], ['-sha384']],
      ['RSA-3072', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:3072'], ['-sha512']],
    ])('certifies a CSR whose key is %s, signed with the hash openssl chose', async (_text, keyArgs, extra) => {
      const ca = await caPromise
      const signed = await ca.signCsr(opensslCsr(keyArgs, extra), { id: 'spiffe://example.org/w' })
      expect(opensslVerify(ca.save().certificateChainPem, signed.certificateChainPem, 'sslclient')).toMatch(/: OK/)
    })

    it('takes a narrower policy: only P-256 and RSA of 3072 bits or more', async () => {
      const ca = await createCertificateAuthority({ trustDomain: 'example.org', csrKeyPolicy: { ecdsaCurves: ['P-256'], minRsaBits: 3072 } })
      await expect(ca.signCsr(opensslCsr(['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384']), { id: 'spiffe://example.org/w' })).rejects.toThrow(/ECDSA P-384; this CA certifies ECDSA P-256, RSA of 3072 to 8192 bits/)
      await expect(ca.signCsr(opensslCsr(['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048']), { id: 'spiffe://example.org/w' })).rejects.toThrow(/RSA-2048/)
      await expect(createCertificateAuthority({ trustDomain: 'example.org', csrKeyPolicy: { minRsaBits: 1024 } })).rejects.toThrow(/minRsaBits/)
    })

    it('refuses to load a CA whose own key is RSA below 2048 bits', () => {
      const keyFile = join(dir, 'weak-ca.key')
      execFileSync('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024', '-out', keyFile], { stdio: 'ignore' })
      const cert = execFileSync('openssl', ['req', '-x509', '-new', '-key', keyFile, '-subj', '/CN=weak', '-days', '1', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign', '-addext', 'subjectAltName=URI:spiffe://example.org'], { encoding: 'utf8' })
      expect(() => loadCertificateAuthority({ certificateChainPem: cert, privateKeyPem: readFileSync(keyFile, 'utf8') })).toThrow(/RSA-1024/)
    })
  })

  it('with csrSans "ignore", certifies only the given ID whatever the CSR names', async () => {
    const ca = await createCertificateAuthority({ trustDomain: 'example.org' })
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    const keyFile = join(dir, 'ignore.key')
    writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }))
    const two = execFileSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/CN=x', '-addext', 'subjectAltName=URI:spiffe://example.org/admin,DNS:evil.example'], { encoding: 'utf8' })
    const signed = await ca.signCsr(two, { id: 'spiffe://example.org/w', csrSans: 'ignore' })
    const leaf = parseCertificate(new X509Certificate(signed.certificateChainPem).raw)
    expect(leaf.uris).toEqual(['spiffe://example.org/w'])
    expect(new X509Certificate(signed.certificateChainPem).subjectAltName).toBe('URI:spiffe://example.org/w')
  })

  it('adds DNS names beside the SPIFFE ID when asked', async () => {
    const ca = await createCertificateAuthority({ trustDomain: 'example.org' })
    const svid = await ca.issue('spiffe://example.org/ns/system/sa/control-plane', { dnsNames: ['ca.system.svc', 'localhost'] })
    expect(new X509Certificate(svid.certificateChainPem).subjectAltName).toBe('URI:spiffe://example.org/ns/system/sa/control-plane, DNS:ca.system.svc, DNS:localhost')
    expect(verifyX509Svid(svid.certificateChainPem, ca.bundle).toString()).toBe('spiffe://example.org/ns/system/sa/control-plane')
    await expect(ca.issue('spiffe://example.org/w', { dnsNames: ['bad name'] })).rejects.toThrow(/dnsNames/)
  })
})
