import { randomBytes } from 'node:crypto'
import { formatSocketAddress, type Service, type Workload, type WorkloadRegistry } from '@ambientkit/core'
import type { AccessLogPeer } from '../access-log'
import { workloadNames } from './context'

/**
 * The request headers ztunnel puts on each HBONE `CONNECT` and reads back
 * (istio/ztunnel `src/proxy/outbound.rs` `create_hbone_request`,
 * `src/baggage.rs`, `src/proxy/inbound.rs`):
 *
 * - `baggage` (W3C Baggage): who the source is, under OpenTelemetry's
 *   names (`k8s.namespace.name`, `k8s.pod.name`, `service.name`,
 *   `service.version`, `k8s.cluster.name`). The destination names a source
 *   its registry does not know by it in metrics and logs.
 * - `forwarded` (RFC 7239): `for="<app ip:port>"`, and `;host=<service>`
 *   when the app connected to a service VIP. The destination reports that
 *   service as `destination_service` if it is one of its own.
 * - `traceparent` (W3C Trace Context): a new trace per connection.
 */

/** What the baggage of a source says (each part optional). */
export interface PeerBaggage {
  readonly cluster?: string
  readonly namespace?: string
  readonly workload?: string
  readonly service?: string
  readonly revision?: string
}

/** The longest baggage read: a peer cannot make the proxy parse more (ztunnel's own are well under). */
const MAX_BAGGAGE = 4096

/** The headers an outbound `CONNECT` carries, as ztunnel sends them. */
export function outboundHeaders(source: Workload, app: AccessLogPeer, service: string | undefined): Record<string, string> {
  const names = workloadNames(source)
  const baggage = [
    `k8s.namespace.name=${source.namespace}`,
    `k8s.pod.name=${source.name}`,
    `service.name=${names.canonicalService}`,
    `service.version=${names.canonicalRevision}`,
  ].join(',')
  const client = app.port === undefined ? app.address : formatSocketAddress({ address: app.address, port: app.port })
  return {
    baggage,
    forwarded: service === undefined ? `for="${client}"` : `for="${client}";host=${service}`,
    traceparent: newTraceparent(),
  }
}

/** Random bytes for trace ids, drawn from the CSPRNG a page at a time rather than 24 bytes per connection. */
const TRACE_RANDOM_POOL = 4096
let traceRandom = Buffer.alloc(0)
let traceRandomUsed = 0

/** A W3C `traceparent` starting a new trace: version 00, random trace and parent ids, not sampled. */
export function newTraceparent(): string {
  if (traceRandomUsed + 24 > traceRandom.length) {
    traceRandom = randomBytes(TRACE_RANDOM_POOL)
    traceRandomUsed = 0
  }
  const id = traceRandom.toString('hex', traceRandomUsed, (traceRandomUsed += 24))
  return `00-${id.slice(0, 32)}-${id.slice(32)}-00`
}

/**
 * The parts of a `baggage` header that name a workload, as ztunnel reads
 * them (`k8s.deployment.name`, `k8s.cronjob.name`, `k8s.job.name` and
 * `k8s.pod.name` all name the workload). Other members, properties after
 * `;`, empty values and anything past {@link MAX_BAGGAGE} are ignored.
 */
export function parseBaggage(header: string | undefined): PeerBaggage {
  if (header === undefined) return {}
  const baggage: { -readonly [K in keyof PeerBaggage]: string } = {}
  for (const member of header.slice(0, MAX_BAGGAGE).split(',')) {
    const eq = member.indexOf('=')
    if (eq < 0) continue
    const key = member.slice(0, eq).trim()
    const value = decodeValue(member.slice(eq + 1).split(';', 1)[0]!.trim())
    if (value === undefined || value === '') continue
    switch (key) {
      case 'k8s.cluster.name':
        baggage.cluster = value
        break
      case 'k8s.namespace.name':
        baggage.namespace = value
        break
      case 'k8s.deployment.name':
      case 'k8s.cronjob.name':
      case 'k8s.job.name':
      case 'k8s.pod.name':
        baggage.workload = value
        break
      case 'service.name':
        baggage.service = value
        break
      case 'service.version':
        baggage.revision = value
    }
  }
  return baggage
}

/** A baggage value, percent-decoded (W3C Baggage §3.2.1.1); `undefined` when malformed. */
function decodeValue(value: string): string | undefined {
  try {
    return decodeURIComponent(value)
  } catch {
    return undefined
  }
}

/**
 * The service a `CONNECT` reached, when its `forwarded` names one by host
 * and this workload is among its endpoints (as ztunnel guesses it: a peer
 * cannot make us report a service the workload is not part of).
 */
export function forwardedService(registry: WorkloadRegistry, workload: Workload, host: string | undefined): Service | undefined {
  if (host === undefined) return undefined
  return registry.servicesByHostname(host).find((service) => service.endpoints.includes(workload.uid))
}

/** A source peer completed from its baggage, where the registry did not know it (ztunnel's derived source). */
export function withBaggage(peer: AccessLogPeer, baggage: PeerBaggage): AccessLogPeer {
  if (peer.workload !== undefined) return peer
  return {
    ...peer,
    ...(baggage.workload === undefined ? {} : { workload: baggage.workload }),
    ...(baggage.namespace === undefined ? {} : { namespace: baggage.namespace }),
    ...(baggage.service === undefined ? {} : { canonicalService: baggage.service }),
    ...(baggage.revision === undefined ? {} : { canonicalRevision: baggage.revision }),
    ...(baggage.cluster === undefined ? {} : { cluster: baggage.cluster }),
  }
}
