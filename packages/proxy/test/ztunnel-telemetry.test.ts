// The istio_tcp_* metrics carry exactly ztunnel's labels, with the values
// Istio's and Kiali's dashboards query, so they work unchanged on our proxy;
// the access log can be written under ztunnel's field names.
import { afterEach, describe, expect, it } from 'vitest'
import { silentLogger, type Logger, type Workload } from '@ambientkit/core'
import { CONNECTION_LABEL_NAMES, createProxyMetrics, observeConnections, type ConnectionObserver, type ProxyMetrics } from '@ambientkit/proxy'
import { ConnectionManager } from '../src/workload/connections'
import { workloadPeer } from '../src/workload/context'

// ztunnel's CommonTrafficLabels (istio/ztunnel src/proxy/metrics.rs at
// 62d826530e5c, 2026-08-20), in its order; its optional locality labels
// (source_region, source_zone, destination_region, destination_zone) are
// left out, as ztunnel leaves them out when it knows no locality.
const ZTUNNEL_LABELS = [
  'reporter',
  'source_workload',
  'source_canonical_service',
  'source_canonical_revision',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'source_version',
  'source_cluster',
  'destination_service',
  'destination_service_namespace',
  'destination_service_name',
  'destination_workload',
  'destination_canonical_service',
  'destination_canonical_revision',
  'destination_workload_namespace',
  'destination_principal',
  'destination_app',
  'destination_version',
  'destination_cluster',
  'request_protocol',
  'response_flags',
  'connection_security_policy',
]

const workload = (name: string, labels: Record<string, string>): Workload => ({
  uid: name,
  name,
  namespace: 'shop',
  serviceAccount: name,
  node: 'node-1',
  addresses: [name === 'web' ? '10.0.1.2' : '10.0.2.5'],
  protocol: 'HBONE',
  labels,
})
const web = workload('web', { app: 'web', version: 'v1' })
const api = workload('api-7d9f', { 'service.istio.io/canonical-name': 'api', 'app.kubernetes.io/name': 'not-this', 'app.kubernetes.io/version': '2.1' })
const webPeer = { ...workloadPeer(web, { address: '10.0.1.2', port: 40_000, family: 4 }, 'spiffe://cluster.local/ns/shop/sa/web') }
const apiPeer = workloadPeer(api, { address: '10.0.2.5', port: 8080, family: 4 }, 'spiffe://cluster.local/ns/shop/sa/api-7d9f')

let observer: ConnectionObserver | undefined
afterEach(() => observer?.close())

function observed(): { manager: ConnectionManager; metrics: ProxyMetrics } {
  const telemetry = {}
  const metrics = createProxyMetrics()
  observer = observeConnections({ telemetry, metrics })
  return { manager: new ConnectionManager(web, webPeer.identity!, telemetry, silentLogger), metrics }
}

/** The labels of the one sample of `name`. */
async function labelsOf(metrics: ProxyMetrics, name: string): Promise<Record<string, string>> {
  const { body } = await metrics.exposition!()
  const lines = body.split('\n').filter((line) => line.startsWith(`${name}{`))
  expect(lines).toHaveLength(1)
  return Object.fromEntries([...lines[0]!.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]))
}

describe('istio_tcp_* labels', () => {
  it("are ztunnel's, in its order, on every istio_tcp_* metric", async () => {
    expect([...CONNECTION_LABEL_NAMES]).toEqual(ZTUNNEL_LABELS)
    const { manager, metrics } = observed()
    const record = manager.start('outbound', webPeer, apiPeer)
    record.open()
    record.close({ outcome: 'closed', bytesSent: 1, bytesReceived: 1 })
    for (const name of ['istio_tcp_connections_opened_total', 'istio_tcp_connections_closed_total', 'istio_tcp_sent_bytes_total', 'istio_tcp_received_bytes_total']) {
      expect(Object.keys(await labelsOf(metrics, name))).toEqual(ZTUNNEL_LABELS)
    }
  })

  it("name the canonical service and revision by Istio's rules, the service, and mutual TLS", async () => {
    const { manager, metrics } = observed()
    const record = manager.start('outbound', webPeer, apiPeer)
    record.protocol = 'HBONE'
    record.service = 'api.shop.svc.cluster.local'
    record.serviceNamespace = 'shop'
    record.open()
    expect(await labelsOf(metrics, 'istio_tcp_connections_opened_total')).toEqual({
      reporter: 'source',
      source_workload: 'web',
      source_canonical_service: 'web',
      source_canonical_revision: 'v1',
      source_workload_namespace: 'shop',
      source_principal: 'spiffe://cluster.local/ns/shop/sa/web',
      source_app: 'web',
      source_version: 'v1',
      source_cluster: 'unknown',
      destination_service: 'api.shop.svc.cluster.local',
      destination_service_namespace: 'shop',
      destination_service_name: 'api',
      destination_workload: 'api-7d9f',
      destination_canonical_service: 'api',
      destination_canonical_revision: '2.1',
      destination_workload_namespace: 'shop',
      destination_principal: 'spiffe://cluster.local/ns/shop/sa/api-7d9f',
      destination_app: 'api',
      destination_version: '2.1',
      destination_cluster: 'unknown',
      request_protocol: 'tcp',
      response_flags: '-',
      connection_security_policy: 'mutual_tls',
    })
  })

  it('fall back to the workload name and latest, to the host name for a service outside Kubernetes, and unknown for plaintext', async () => {
    const { manager, metrics } = observed()
    const bare = workload('db-0', {})
    const record = manager.start('inbound-plaintext', { address: '192.0.2.7', port: 5000 }, workloadPeer(bare, { address: '10.0.2.5', port: 5432, family: 4 }))
    record.service = 'db.example.com'
    record.serviceNamespace = 'shop'
    record.open()
    expect(await labelsOf(metrics, 'istio_tcp_connections_opened_total')).toMatchObject({
      reporter: 'destination',
      source_workload: 'unknown',
      source_canonical_service: 'unknown',
      source_principal: 'unknown',
      destination_service_name: 'db.example.com',
      destination_canonical_service: 'db-0',
      destination_canonical_revision: 'latest',
      connection_security_policy: 'unknown',
    })
  })
})

describe('istio_tcp_* counting', () => {
  /** The value of the sample of `name` whose labels include `match`, summed. */
  async function valueOf(metrics: ProxyMetrics, name: string, match = ''): Promise<number> {
    const { body } = await metrics.exposition!()
    return body
      .split('\n')
      .filter((line) => line.startsWith(`${name}{`) && line.includes(match))
      .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(' ') + 1)), 0)
  }

  it('passes one shared label set for every connection between the same peers, and another once a field differs', () => {
    const telemetry = {}
    const seen: unknown[] = []
    const metrics = { connectionOpened: (labels: unknown) => seen.push(labels), connectionClosed: (labels: unknown) => seen.push(labels) } as unknown as ProxyMetrics
    observer = observeConnections({ telemetry, metrics })
    const manager = new ConnectionManager(web, webPeer.identity!, telemetry, silentLogger)
    for (let i = 0; i < 3; i++) {
      const record = manager.start('outbound', { ...webPeer, port: 40_000 + i }, apiPeer)
      record.open()
      record.close({ outcome: 'closed' })
    }
    expect(new Set(seen).size).toBe(1)
    expect(Object.isFrozen(seen[0])).toBe(true)
    // Two fields whose texts, run together, read the same: still two sets.
    const shifted = manager.start('outbound', { ...webPeer, workload: 'we', canonicalService: 'bweb' }, apiPeer)
    shifted.open()
    const plain = manager.start('outbound', { ...webPeer, workload: 'web', canonicalService: 'web' }, apiPeer)
    plain.open()
    expect(seen.at(-1)).not.toBe(seen.at(-2))
    expect((seen.at(-2) as Record<string, string>).source_workload).toBe('we')
  })

  it('counts every connection and byte across scrapes, and with more label sets between two scrapes than it keeps pending', async () => {
    const { manager, metrics } = observed()
    const first = manager.start('outbound', webPeer, apiPeer)
    first.open()
    expect(await valueOf(metrics, 'istio_tcp_connections_opened_total')).toBe(1)
    expect(await valueOf(metrics, 'istio_tcp_connections_closed_total')).toBe(0)
    first.close({ outcome: 'closed', bytesSent: 5, bytesReceived: 7 })
    // 1,500 destinations: more label sets than are kept between two scrapes.
    for (let i = 0; i < 1500; i++) {
      const record = manager.start('outbound', webPeer, { ...apiPeer, workload: `api-${i}` })
      record.open()
      record.close({ outcome: 'closed', bytesSent: 1, bytesReceived: 2 })
    }
    expect(await valueOf(metrics, 'istio_tcp_connections_opened_total')).toBe(1501)
    expect(await valueOf(metrics, 'istio_tcp_connections_closed_total')).toBe(1501)
    expect(await valueOf(metrics, 'istio_tcp_received_bytes_total')).toBe(5 + 1500)
    expect(await valueOf(metrics, 'istio_tcp_sent_bytes_total')).toBe(7 + 3000)
    expect(await valueOf(metrics, 'istio_tcp_connections_closed_total', 'destination_workload="api-1499"')).toBe(1)
  })
})

describe("the access log in ztunnel's format", () => {
  /** A logger keeping what it is given at `info` and `error`. */
  function capturing(): { logger: Logger; lines: Array<{ level: string; fields: unknown; message: unknown }> } {
    const lines: Array<{ level: string; fields: unknown; message: unknown }> = []
    const logger: Logger = {
      ...silentLogger,
      info: (fields: unknown, message?: unknown) => void lines.push({ level: 'info', fields, message }),
      error: (fields: unknown, message?: unknown) => void lines.push({ level: 'error', fields, message }),
      child: () => logger,
    }
    return { logger, lines }
  }

  it('names the fields as ztunnel does, with the HBONE address, the target inside it and the bytes the reporting side sent', () => {
    const telemetry = {}
    const { logger, lines } = capturing()
    observer = observeConnections({ telemetry, logger, accessLogFormat: 'ztunnel' })
    const manager = new ConnectionManager(web, webPeer.identity!, telemetry, silentLogger)
    const outbound = manager.start('outbound', webPeer, apiPeer)
    outbound.protocol = 'HBONE'
    outbound.service = 'api.shop.svc.cluster.local'
    outbound.open()
    outbound.close({ outcome: 'closed', bytesSent: 10, bytesReceived: 250 })
    const inbound = manager.start('inbound-hbone', webPeer, apiPeer)
    inbound.protocol = 'HBONE'
    inbound.open()
    inbound.close({ outcome: 'closed', bytesSent: 10, bytesReceived: 250 })
    const plaintext = manager.start('inbound-plaintext', { address: '192.0.2.7', port: 5000 }, apiPeer)
    plaintext.close({ outcome: 'denied', reason: 'denied by shop/deny-all' })
    expect(lines).toHaveLength(3)
    expect(lines[0]).toEqual({
      level: 'info',
      message: 'connection complete',
      fields: {
        'src.addr': '10.0.1.2:40000',
        'src.workload': 'web',
        'src.namespace': 'shop',
        'src.identity': 'spiffe://cluster.local/ns/shop/sa/web',
        'dst.addr': '10.0.2.5:15008',
        'dst.hbone_addr': '10.0.2.5:8080',
        'dst.service': 'api.shop.svc.cluster.local',
        'dst.workload': 'api-7d9f',
        'dst.namespace': 'shop',
        'dst.identity': 'spiffe://cluster.local/ns/shop/sa/api-7d9f',
        direction: 'outbound',
        bytes_sent: 10,
        bytes_recv: 250,
        duration: expect.stringMatching(/^\d+ms$/),
      },
    })
    expect(lines[1]!.fields).toMatchObject({ direction: 'inbound', bytes_sent: 250, bytes_recv: 10 })
    expect(lines[2]).toMatchObject({ level: 'error', fields: { 'src.addr': '192.0.2.7:5000', 'dst.addr': '10.0.2.5:8080', direction: 'inbound', error: 'denied by shop/deny-all' } })
    expect(lines[2]!.fields).not.toHaveProperty('src.identity')
    expect(lines[2]!.fields).not.toHaveProperty('dst.hbone_addr')
  })

  it('stays in ambientkit’s format by default', () => {
    const telemetry = {}
    const { logger, lines } = capturing()
    observer = observeConnections({ telemetry, logger })
    new ConnectionManager(web, webPeer.identity!, telemetry, silentLogger).start('outbound', webPeer, apiPeer).close({ outcome: 'closed' })
    expect(lines).toEqual([{ level: 'info', message: 'connection', fields: { access: expect.objectContaining({ listener: 'outbound', outcome: 'closed' }) } }])
  })
})
