/**
 * The ambient mesh data plane: HBONE tunnels (HTTP/2 `CONNECT` over mutual
 * TLS, wire-compatible with Istio's ztunnel), the workload proxy and the
 * node proxy.
 *
 * @example
 * ```ts
 * import { createHboneClient, createHboneServer, spliceTunnel } from '@ambientkit/proxy'
 *
 * const server = createHboneServer({
 *   tls: serverTlsOptions,
 *   decide: () => ({ action: 'serve' }),
 * })
 * await server.listen(15008, '127.0.0.1')
 *
 * const client = createHboneClient({ tls: clientTlsOptions })
 * const tunnel = await client.connect('127.0.0.1:8080', {
 *   via: '127.0.0.1:15008',
 *   expectedIdentities: ['spiffe://cluster.local/ns/shop/sa/api'],
 * })
 * await spliceTunnel(appSocket, tunnel)
 * ```
 *
 * @packageDocumentation
 */
export { HBONE_PORT, DEFAULT_HBONE_WINDOWS, type HboneWindows } from './hbone/constants'
export { HboneErrorCode, type HboneErrorCodeValue } from './hbone/errors'
export { resetTunnel, spliceTunnel, type SpliceOutcome, type SpliceResult } from './hbone/splice'
export {
  createHboneServer,
  type HboneDecision,
  type HboneHandshakeFailure,
  type HboneRequest,
  type HboneServer,
  type HboneServerOptions,
  type HboneServerStats,
  type HboneTunnelOutcome,
  type HboneTunnelRecord,
  type UpstreamConnectOptions,
  type UpstreamConnector,
} from './hbone/server'
export {
  createHboneClient,
  type ClientTlsOptionsFn,
  type ClientTlsRequest,
  type HboneClient,
  type HboneClientOptions,
  type HboneConnectOptions,
  type HboneSessionStats,
  type SocketFactory,
  type SocketFactoryOptions,
} from './hbone/client'
export { nativeHboneThreads, nativeHboneUnavailable } from './hbone/native'
export {
  createWorkloadProxy,
  defaultHboneDataPath,
  DEFAULT_WORKLOAD_PROXY_PORTS,
  type HboneDataPath,
  type WorkloadProxy,
  type WorkloadProxyOptions,
  type WorkloadProxyPorts,
} from './workload-proxy'
export {
  createNodeProxy,
  type NodeProxy,
  type NodeProxyConfigDump,
  type NodeProxyEnrollment,
  type NodeProxyOptions,
  type WorkloadProxyDefaults,
} from './node-proxy'
export { createProxyMetrics, type ConnectionLabels, type ProxyMetrics } from './metrics'
export type { AccessLogEntry, AccessLogPeer, ConnectionOutcome, ProxyListener } from './access-log'
export { spliceSockets, type SocketSpliceResult } from './splice-sockets'
export { createDnsMetrics, createDnsProxy, DnsErrorCode, kubernetesSearchDomains, type DnsDropReason, type DnsMetrics, type DnsProxy, type DnsProxyOptions, type DnsRequestLabels } from './dns/index'
