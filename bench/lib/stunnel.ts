import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { CertificateAuthority } from '@ambientkit/identity'
import { startRelay, type RelayProcess, type RelayService } from './processes'

/**
 * The baseline a mesh has to beat: stunnel4 doing mutual TLS 1.3 between two
 * pods with certificates from the same CA (ECDSA P-256 X.509-SVIDs). stunnel
 * verifies the chain to our root; it has no option to match a URI SAN, so
 * unlike the mesh it does not check the peer's SPIFFE ID (it would accept any
 * SVID of the trust domain).
 */


/** A running stunnel process. */
export type StunnelProcess = RelayProcess

async function writeIdentity(ca: CertificateAuthority, dir: string, role: string, id: string): Promise<{ cert: string; key: string }> {
  const svid = await ca.issue(id, { keyType: 'ecdsa-p256' })
  const cert = join(dir, `${role}.crt`)
  const key = join(dir, `${role}.key`)
  writeFileSync(cert, svid.certificateChainPem)
  writeFileSync(key, svid.privateKeyPem, { mode: 0o600 })
  return { cert, key }
}

type Options = Array<[string, string]>

function config(global: Options, services: Array<[string, Options]>): string {
  const lines = global.map(([k, v]) => `${k} = ${v}`)
  for (const [name, options] of services) lines.push('', `[${name}]`, ...options.map(([k, v]) => `${k} = ${v}`))
  return `${lines.join('\n')}\n`
}

/** Starts stunnel in `ns` and resolves once it has bound every listener (it logs "Configuration successful"). */
function start(ns: string, file: string): Promise<StunnelProcess> {
  return startRelay(ns, 'stunnel4', [file], (log, child) => (log.includes('Configuration successful') ? child.pid : undefined))
}

/**
 * Starts the server stunnel in `serverNs` (listening on every `tunnel` port)
 * and the client stunnel in `clientNs` (listening on `127.0.0.1:local`,
 * connecting to `serverIp:tunnel`). Both keep TCP_NODELAY on every socket,
 * as the mesh does, and logs at "notice" so logging costs nothing per byte.
 */
export async function startStunnelPair(options: {
  ca: CertificateAuthority
  dir: string
  clientNs: string
  serverNs: string
  serverIp: string
  services: readonly RelayService[]
}): Promise<{ client: StunnelProcess; server: StunnelProcess }> {
  const { ca, dir } = options
  const caFile = join(dir, 'ca.crt')
  writeFileSync(caFile, ca.certificate.toString())
  const clientId = await writeIdentity(ca, dir, 'client', `spiffe://${ca.trustDomain.name}/ns/bench/sa/stunnel-client`)
  const serverId = await writeIdentity(ca, dir, 'server', `spiffe://${ca.trustDomain.name}/ns/bench/sa/stunnel-server`)
  const tls = (identity: { cert: string; key: string }): Options => [
    ['cert', identity.cert],
    ['key', identity.key],
    ['CAfile', caFile],
    ['verifyChain', 'yes'],
    ['requireCert', 'yes'],
    ['sslVersionMin', 'TLSv1.3'],
    ['socket', 'l:TCP_NODELAY=1'],
    ['socket', 'r:TCP_NODELAY=1'],
  ]
  const global: Options = [
    ['foreground', 'yes'],
    ['pid', ''],
    ['syslog', 'no'],
    ['debug', '5'],
  ]
  const serverFile = join(dir, 'server.conf')
  writeFileSync(
    serverFile,
    config(
      global,
      options.services.map((s): [string, Options] => [s.name, [...tls(serverId), ['accept', `0.0.0.0:${s.tunnel}`], ['connect', `127.0.0.1:${s.target}`]]]),
    ),
  )
  const clientFile = join(dir, 'client.conf')
  writeFileSync(
    clientFile,
    config(
      global,
      options.services.map((s): [string, Options] => [s.name, [...tls(clientId), ['client', 'yes'], ['accept', `127.0.0.1:${s.local}`], ['connect', `${options.serverIp}:${s.tunnel}`]]]),
    ),
  )
  const server = await start(options.serverNs, serverFile)
  const client = await start(options.clientNs, clientFile)
  return { client, server }
}
