import { readFileSync } from 'node:fs'
import { AmbientError, invalidArgument, parseSocketAddress, tryCanonicalIp, type SocketAddress } from '@ambientkit/core'

/** Error codes of the DNS proxy of `@ambientkit/proxy` (listed in docs/errors.md). */
export const DnsErrorCode = {
  /** No upstream resolver to forward to: none given, and the resolv.conf read has no usable `nameserver` line (`details.path`). */
  NoUpstream: 'ERR_AMBIENT_DNS_NO_UPSTREAM',
} as const

/** Where a resolver listens when no port is given. */
const DNS_SERVER_PORT = 53

const LOOPBACK = /^(127\.|::1$|::ffff:127\.)/

/**
 * The upstream resolvers of a DNS proxy: `upstreams` when given (`"ip"`,
 * `"ip:port"` or `"[ipv6]:port"`), else the `nameserver` lines of
 * `resolvConf`, as ztunnel takes its own resolv.conf's: the node agent's
 * resolver (kube-dns on Kubernetes) is the one the pods use too, and the
 * agent cannot read a pod's file system. Loopback resolvers of that file
 * (systemd-resolved's 127.0.0.53) are skipped: inside a pod's namespace
 * loopback is the pod's own, and nothing answers there.
 *
 * @throws `ERR_AMBIENT_INVALID_ARGUMENT` for an upstream that is not an
 * address, `ERR_AMBIENT_DNS_NO_UPSTREAM` when none is left.
 */
export function resolveUpstreams(upstreams: readonly string[] | undefined, resolvConf: string): SocketAddress[] {
  if (upstreams !== undefined) {
    if (!Array.isArray(upstreams) || upstreams.length === 0) throw invalidArgument('upstreams', upstreams, 'a non-empty array of "ip", "ip:port" or "[ipv6]:port"')
    return upstreams.map((text, i) => parseUpstream(text, `upstreams[${i}]`))
  }
  let content: string
  try {
    content = readFileSync(resolvConf, 'utf8')
  } catch (err) {
    throw new AmbientError(DnsErrorCode.NoUpstream, `cannot read the upstream resolvers from ${resolvConf}: ${(err as Error).message}; pass upstreams`, {
      cause: err,
      details: { path: resolvConf },
    })
  }
  const found = nameservers(content)
  const usable = found.filter((ip) => !LOOPBACK.test(ip))
  if (usable.length === 0) {
    const why = found.length === 0 ? 'has no nameserver line' : `has only loopback nameservers (${found.join(', ')}), which a pod cannot reach`
    throw new AmbientError(DnsErrorCode.NoUpstream, `${resolvConf} ${why}; pass upstreams`, { details: { path: resolvConf, nameservers: found } })
  }
  return usable.map((address) => ({ address, port: DNS_SERVER_PORT, family: address.includes(':') ? 6 : 4 }))
}

/** The addresses of the `nameserver` lines of a resolv.conf, in order (a zone-scoped IPv6 address loses its zone, which names another namespace's interface). */
export function nameservers(content: string): string[] {
  const out: string[] = []
  for (const line of content.split('\n')) {
    const [keyword, value] = line.trim().split(/\s+/)
    if (keyword !== 'nameserver' || value === undefined) continue
    const ip = tryCanonicalIp(value.split('%')[0]!)
    if (ip !== undefined) out.push(ip)
  }
  return out
}

function parseUpstream(text: unknown, name: string): SocketAddress {
  if (typeof text !== 'string') throw invalidArgument(name, text, 'an address "ip", "ip:port" or "[ipv6]:port"')
  const ip = tryCanonicalIp(text)
  if (ip !== undefined) return { address: ip, port: DNS_SERVER_PORT, family: ip.includes(':') ? 6 : 4 }
  try {
    return parseSocketAddress(text)
  } catch {
    throw invalidArgument(name, text, 'an address "ip", "ip:port" or "[ipv6]:port"')
  }
}
