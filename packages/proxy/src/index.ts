/**
 * The ambient mesh data plane: HBONE tunnels (HTTP/2 `CONNECT` over mutual
 * TLS, wire-compatible with Istio's ztunnel) behind one transport contract
 * (`HboneTransport`: Node's stack, the native one, the same-node one), the
 * workload proxy and the node proxy. It depends on no capture code: the
 * sockets of a pod come through `@ambientkit/core`'s `NetnsSockets`.
 *
 * @example
 * ```ts
 * import { createCertificateAuthority, createIdentityManager, createLocalCaSource, tlsClientOptions, tlsServerOptions } from '@ambientkit/identity'
 * import { createHboneClient, createHboneServer } from '@ambientkit/proxy'
 *
 * const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
 * const manager = createIdentityManager({ source: createLocalCaSource(ca) })
 * const api = 'spiffe://cluster.local/ns/shop/sa/api'
 * const web = 'spiffe://cluster.local/ns/shop/sa/web'
 *
 * const server = createHboneServer({
 *   tls: await tlsServerOptions({ manager, id: api, alpnProtocols: ['h2'] }),
 *   decide: () => ({ action: 'serve' }),
 * })
 * await server.listen(15008, '127.0.0.1')
 *
 * const client = createHboneClient({ tls: (id, { expectedIdentities, signal }) => tlsClientOptions({ manager, id: id ?? web, expectedPeers: expectedIdentities, signal }) })
 * const tunnel = await client.connect('127.0.0.1:8080', { via: '127.0.0.1:15008', expectedIdentities: [api] })
 * tunnel.end('hello')
 * ```
 *
 * @packageDocumentation
 */
export { HBONE_PORT, DEFAULT_HBONE_WINDOWS, type HboneWindows } from './hbone/constants'
export { HboneErrorCode, type HboneErrorCodeValue } from './hbone/errors'
export type {
  CarriedConnection,
  HboneDecision,
  HboneHandshakeFailure,
  HboneRequest,
  HboneServerStats,
  HboneSessionStats,
  HboneTransport,
  HboneTunnel,
  HboneTunnelOutcome,
  HboneTunnelRecord,
  OpenOptions,
  SessionConnectOptions,
  SessionConnector,
  TransportClient,
  TransportClientOptions,
  TransportServer,
  TransportServerOptions,
  TunnelOutcome,
  TunnelProtocol,
  TunnelResult,
  UpstreamConnectOptions,
  UpstreamConnector,
} from './transport/contract'
export { createNodeTransport } from './transport/node'
export { createNativeTransport } from './transport/native'
export { createSameNodeTransport, type SameNodeTransportOptions } from './transport/same-node'
export { resetTunnel, spliceTunnel } from './hbone/splice'
export { createHboneServer, type HboneServer, type HboneServerOptions } from './hbone/server'
export {
  createHboneClient,
  type ClientTlsOptionsFn,
  type ClientTlsRequest,
  type HboneClient,
  type HboneClientOptions,
  type HboneConnectOptions,
  type SocketFactory,
  type SocketFactoryOptions,
} from './hbone/client'
export { nativeHboneThreads, nativeHboneUnavailable } from './hbone/native'
export {
  createWorkloadProxy,
  defaultHboneDataPath,
  transportFor,
  type DrainOptions,
  type HboneDataPath,
  type WorkloadProxy,
  type WorkloadProxyOptions,
} from './workload/workload-proxy'
export { DEFAULT_WORKLOAD_PROXY_PORTS, type WorkloadProxyPorts } from './workload/ports'
export {
  createNodeProxy,
  type NodeProxy,
  type NodeProxyAdminOptions,
  type NodeProxyComponent,
  type NodeProxyConfigDump,
  type NodeProxyEnrollment,
  type NodeProxyOptions,
  type WorkloadProxyDefaults,
} from './node-proxy'
export {
  CONNECTION_CLOSE_CHANNEL,
  CONNECTION_OPEN_CHANNEL,
  HANDSHAKE_FAILURE_CHANNEL,
  type ConnectionCloseMessage,
  type ConnectionOpenMessage,
  type HandshakeFailureMessage,
  type ProxyConnection,
} from './workload/connections'
export { connectionLabels, observeConnections, type ConnectionObserver, type ConnectionObserverOptions } from './telemetry'
export { createProxyMetrics, type ConnectionLabels, type DenialLabels, type ProxyMetrics } from './metrics'
export type { AccessLogEntry, AccessLogPeer, ConnectionOutcome, ProxyListener } from './access-log'
export { spliceSockets, type SocketSpliceResult } from './splice-sockets'
export { createDnsProxy, DnsErrorCode, kubernetesSearchDomains, type DnsDropReason, type DnsMetrics, type DnsProxy, type DnsProxyOptions, type DnsRequestLabels } from './dns/index'
