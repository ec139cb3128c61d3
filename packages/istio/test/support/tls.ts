import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** A throw-away CA and a server certificate it signed, made by openssl (not by our code). */
export interface TestPki {
  readonly caPem: string
  readonly serverKeyPem: string
  readonly serverCertPem: string
  /** Another CA's certificate: trusting it instead must fail the handshake. */
  readonly otherCaPem: string
}

/** Makes a CA and a server certificate for `names` (DNS names and IP addresses) with openssl. */
export function makeTestPki(names: readonly string[] = ['localhost', '127.0.0.1', '::1']): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'ambientkit-pki-'))
  const run = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
  try {
    const ca = (name: string): void => {
      run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '1', '-subj', `/O=ambientkit test/CN=${name}`)
    }
    ca('ca')
    ca('other')
    run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=istiod')
    const san = names.map((n) => (/^[0-9.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',')
    writeFileSync(join(dir, 'ext.cnf'), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`)
    run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'ext.cnf')
    const read = (file: string): string => readFileSync(join(dir, file), 'utf8')
    return { caPem: read('ca.pem'), serverKeyPem: read('server.key'), serverCertPem: read('server.pem'), otherCaPem: read('other.pem') }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
