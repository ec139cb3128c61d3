/**
 * The shared contract of ambientkit: the workload and service model, the
 * workload registry, the L4 authorization model and its evaluator, strict
 * socket-address parsing, errors with stable codes, and the logger and
 * lifecycle interfaces every other package uses.
 *
 * @example
 * ```ts
 * import { createWorkloadRegistry, evaluateAuthorization, loadAuthorizationPolicy } from '@ambientkit/core'
 *
 * const registry = createWorkloadRegistry()
 * registry.upsertWorkload({
 *   uid: 'pod-1', name: 'api', namespace: 'shop', serviceAccount: 'api', node: 'node-1',
 *   addresses: ['10.1.0.5'], protocol: 'HBONE', labels: { app: 'api' },
 * })
 * const allowFrontend = loadAuthorizationPolicy({
 *   name: 'allow-frontend', namespace: 'shop', scope: 'namespace', action: 'ALLOW',
 *   rules: [[[{ principals: ['cluster.local/ns/shop/sa/frontend'] }]]],
 * })
 * const destination = registry.workloadByAddress('10.1.0.5')!
 * const decision = evaluateAuthorization([allowFrontend], {
 *   sourceIp: '10.1.0.9', sourceIdentity: 'spiffe://cluster.local/ns/shop/sa/frontend',
 *   destinationIp: '10.1.0.5', destinationPort: 8080, destination,
 * })
 * decision.allowed // true, decided by allow-frontend
 * ```
 *
 * @packageDocumentation
 */
export {
  AmbientError,
  CoreErrorCode,
  abortError,
  describeValue,
  invalidArgument,
  isAmbientError,
  throwIfAborted,
  type AmbientErrorCode,
  type AmbientErrorDetails,
  type AmbientErrorDetailsMap,
  type AmbientErrorOptions,
  type InvalidValueDetails,
  type NoDetails,
} from './errors'
export {
  createSubscribers,
  type AbortOptions,
  type Closable,
  type DrainOptions,
  type Drainable,
  type LongLived,
  type Startable,
  type SubscribeOptions,
  type Subscribable,
  type Subscribers,
  type SubscribersOptions,
  type Unsubscribe,
} from './lifecycle'
export { assertLinux } from './platform'
export {
  ADMIN_PORT,
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
export { createJsonLogger, silentLogger, type JsonLoggerOptions, type LogFn, type LogLevel, type Logger } from './logger'
export {
  canonicalIp,
  formatSocketAddress,
  ipFamily,
  isPort,
  parseSocketAddress,
  tryCanonicalIp,
  type IpFamily,
  type SocketAddress,
} from './address'
export {
  DEFAULT_TRUST_DOMAIN,
  normalizeService,
  normalizeWorkload,
  parseWorkloadIdentity,
  workloadIdentity,
  type Service,
  type Workload,
  type WorkloadProtocol,
} from './workload'
export {
  createWorkloadRegistry,
  type Destination,
  type RegistryChange,
  type RegistrySnapshot,
  type WorkloadRegistry,
} from './registry'
export {
  evaluateAuthorization,
  loadAuthorizationPolicy,
  policyApplies,
  type AuthorizationAction,
  type AuthorizationClause,
  type AuthorizationConnection,
  type AuthorizationDecision,
  type AuthorizationMatch,
  type AuthorizationPolicy,
  type AuthorizationReason,
  type AuthorizationRule,
  type AuthorizationScope,
} from './authorization'
export type { PodEnrollment, PodEventAck, PodSource, PodSourceEvent } from './pod-source'
export type { AcceptedSocket, BindUdpFdOptions, ConnectFdOptions, ListenFdOptions, NetnsSockets, SocketAcceptor } from './netns-sockets'
export { createPolicyStore, type PolicyChange, type PolicyStore, type PolicyStoreChanges } from './policy-store'
