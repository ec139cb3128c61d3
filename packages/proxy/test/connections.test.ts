// One record per connection: it opens at most once, closes exactly once,
// and is the only thing that reports a connection. Metrics and the access
// log hear of it through diagnostics_channel, under labels fixed at the open.
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { afterEach, describe, expect, it } from 'vitest'
import { silentLogger, type Workload } from '@ambientkit/core'
import { CONNECTION_CLOSE_CHANNEL, CONNECTION_OPEN_CHANNEL, createProxyMetrics, observeConnections, type AccessLogEntry, type ConnectionObserver, type ProxyMetrics } from '@ambientkit/proxy'
import { ConnectionManager } from '../src/workload/connections'

const api: Workload = { uid: 'api', name: 'api', namespace: 'shop', serviceAccount: 'api', node: 'node-1', addresses: ['10.0.2.5'], protocol: 'HBONE', labels: {} }
const web = { address: '10.0.1.2', port: 40_000, workload: 'web', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/web' }
const app = { address: '10.0.2.5', port: 8080, workload: 'api', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/api' }

let observer: ConnectionObserver | undefined
afterEach(() => observer?.close())

function observed(accessLog?: (entry: AccessLogEntry) => void): { manager: ConnectionManager; metrics: ProxyMetrics; entries: AccessLogEntry[] } {
  const telemetry = {}
  const metrics = createProxyMetrics()
  const entries: AccessLogEntry[] = []
  observer = observeConnections({ telemetry, metrics, accessLog: accessLog ?? ((entry) => entries.push(entry)) })
  return { manager: new ConnectionManager(api, app.identity, telemetry, silentLogger), metrics, entries }
}

/** The samples of `name` in the exposition, `labels value` per line. */
async function samples(metrics: ProxyMetrics, name: string): Promise<string[]> {
  const { body } = await metrics.exposition!()
  return body.split('\n').filter((line) => line.startsWith(`${name}{`))
}

describe('connection records', () => {
  it('count a connection that never became established neither opened nor closed, and log it once', async () => {
    const { manager, metrics, entries } = observed()
    const record = manager.start('inbound-hbone', web, app)
    record.protocol = 'HBONE'
    record.policy = 'shop/deny-web'
    record.close({ outcome: 'denied', reason: 'denied by shop/deny-web' })
    record.close({ outcome: 'closed' })
    expect(await samples(metrics, 'istio_tcp_connections_opened_total')).toEqual([])
    expect(await samples(metrics, 'istio_tcp_connections_closed_total')).toEqual([])
    expect(await samples(metrics, 'ambientkit_authorization_denials_total')).toEqual([expect.stringMatching(/policy="shop\/deny-web".*\} 1$/)])
    expect(entries).toHaveLength(1)
    expect(entries[0]).toMatchObject({ listener: 'inbound-hbone', protocol: 'HBONE', outcome: 'denied', policy: 'shop/deny-web' })
    expect(manager.size).toBe(0)
  })

  it('count an open whose tunnel then failed (upstream connected, stream gone before the 200) closed under the same labels', async () => {
    const { manager, metrics } = observed()
    const record = manager.start('inbound-hbone', web, app)
    record.open() // the upstream connected
    record.close({ outcome: 'failed', reason: 'HBONE stream closed before upstream connected' })
    const opened = await samples(metrics, 'istio_tcp_connections_opened_total')
    expect(opened).toEqual([expect.stringMatching(/\} 1$/)])
    expect((await samples(metrics, 'istio_tcp_connections_closed_total')).map((line) => line.replace('closed_total', 'opened_total'))).toEqual(opened)
  })

  it('open and close once each, under the labels fixed at the open', async () => {
    const { manager, metrics, entries } = observed()
    const record = manager.start('inbound-hbone', web, app)
    record.open()
    record.open()
    // Whatever changes on the record later, the close lands where the open did.
    record.destination = { ...app, workload: 'renamed' }
    record.close({ outcome: 'closed', bytesSent: 100, bytesReceived: 233 })
    record.close({ outcome: 'reset' })
    const opened = await samples(metrics, 'istio_tcp_connections_opened_total')
    const closed = await samples(metrics, 'istio_tcp_connections_closed_total')
    expect(opened).toHaveLength(1)
    expect(opened[0]).toMatch(/destination_workload="api".*\} 1$/)
    expect(closed.map((line) => line.replace('closed_total', 'opened_total'))).toEqual(opened)
    expect(await samples(metrics, 'istio_tcp_sent_bytes_total')).toEqual([expect.stringMatching(/\} 100$/)])
    expect(await samples(metrics, 'istio_tcp_received_bytes_total')).toEqual([expect.stringMatching(/\} 233$/)])
    expect(entries.map((e) => e.outcome)).toEqual(['closed'])
  })

  it('publish on diagnostics_channel for any subscriber, whatever the telemetry scope', () => {
    const { manager } = observed()
    const seen: string[] = []
    const onOpen = (): number => seen.push('open')
    const onClose = (message: unknown): number => seen.push(`close ${(message as { entry: AccessLogEntry }).entry.outcome}`)
    subscribe(CONNECTION_OPEN_CHANNEL, onOpen)
    subscribe(CONNECTION_CLOSE_CHANNEL, onClose)
    try {
      const record = manager.start('outbound', web, app)
      record.open()
      record.close({ outcome: 'closed' })
    } finally {
      unsubscribe(CONNECTION_OPEN_CHANNEL, onOpen)
      unsubscribe(CONNECTION_CLOSE_CHANNEL, onClose)
    }
    expect(seen).toEqual(['open', 'close closed'])
  })

  it('end as terminated, with the reason, when the proxy closed an established one', () => {
    const { manager, entries } = observed()
    let stopped = 0
    const record = manager.start('inbound-hbone', web, app)
    record.onTerminate(() => stopped++)
    record.open()
    manager.terminateAll('workload proxy closed')
    record.close({ outcome: 'reset' })
    record.terminate('again')
    expect(stopped).toBe(1)
    expect(entries).toEqual([expect.objectContaining({ outcome: 'terminated', reason: 'workload proxy closed' })])
  })

  it('keep counting when the access log throws (a full disk never stops the proxy)', async () => {
    const { manager, metrics } = observed(() => {
      throw new Error('ENOSPC')
    })
    for (let i = 0; i < 3; i++) {
      const record = manager.start('outbound', web, app)
      record.open()
      expect(() => record.close({ outcome: 'closed' })).not.toThrow()
    }
    expect(observer!.accessLogFailures).toBe(3)
    expect(await samples(metrics, 'istio_tcp_connections_closed_total')).toEqual([expect.stringMatching(/\} 3$/)])
    expect(await samples(metrics, 'ambientkit_write_failures_total')).toEqual(['ambientkit_write_failures_total{file="access_log"} 3'])
  })

  it('let a drain wait for the last connection', async () => {
    const { manager } = observed()
    const record = manager.start('outbound', web, app)
    let idle = false
    const waiting = manager.idle({ deadline: 60_000 }).then(() => (idle = true))
    await Promise.resolve()
    expect(idle).toBe(false)
    record.close({ outcome: 'closed' })
    await waiting
    expect(idle).toBe(true)
  })
})
