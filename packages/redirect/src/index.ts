/**
 * In-pod traffic capture without eBPF: open a pod's network namespace,
 * create listening and connecting sockets inside it, and recover the
 * original destination of redirected connections.
 *
 * @example
 * ```ts
 * import { openNetns, originalDestination, OUTBOUND_PORT, PROXY_MARK } from '@ambientkit/redirect'
 *
 * const pod = openNetns('pod-a') // /run/netns/pod-a
 * const outbound = await pod.listen({ host: '127.0.0.1', port: OUTBOUND_PORT, mark: PROXY_MARK })
 * outbound.on('connection', async (app) => {
 *   const target = originalDestination(app) // where the app meant to go
 *   const upstream = await pod.connect({ host: target.address, port: target.port, mark: PROXY_MARK })
 *   app.pipe(upstream).pipe(app)
 * })
 * ```
 *
 * @packageDocumentation
 */
export { RedirectErrorCode } from './errors'
export {
  CONNMARK,
  DNS_PORT,
  HBONE_PORT,
  INBOUND_PORT,
  OUTBOUND_PORT,
  PROBE_ADDRESS_IPV4,
  PROBE_ADDRESS_IPV6,
  PROXY_MARK,
  PROXY_MASK,
  ROUTE_TABLE,
} from './constants'
export {
  openNetns,
  type Netns,
  type NetnsConnectOptions,
  type NetnsExecOptions,
  type NetnsExecResult,
  type NetnsListenOptions,
} from './netns'
export {
  getSocketMark,
  originalDestination,
  readSocketOptions,
  setSocketMark,
  type SocketLike,
  type SocketOptions,
} from './sockets'
