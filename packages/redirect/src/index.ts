/**
 * In-pod traffic capture without eBPF: capture rules (iptables or
 * nftables, IPv4 and IPv6) from one model, applied inside a pod's network
 * namespace; listening and connecting sockets created inside it; and the
 * original destination of redirected connections.
 *
 * @example
 * ```ts
 * import { applyCapture, openNetns, originalDestination, OUTBOUND_PORT, PROXY_MARK } from '@ambientkit/redirect'
 *
 * const pod = openNetns('pod-a') // /run/netns/pod-a
 * await applyCapture(pod, { captureDns: false }, { backend: 'auto' })
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
import { assertLinux } from '@ambientkit/core'

assertLinux('@ambientkit/redirect', 'network namespaces, netfilter, and socket options through its native addon')

export { RedirectErrorCode } from './errors'
export { DEFAULT_CAPTURE, resolveCaptureConfig, type CaptureConfig, type ResolvedCaptureConfig } from './config'
export {
  captureRules,
  type CaptureAction,
  type CaptureFamily,
  type CaptureHook,
  type CaptureRoutingSpec,
  type CaptureRule,
  type CaptureRuleSet,
  type CaptureStage,
} from './rules'
export { IPTABLES_CHAINS, NFT_TABLE, renderIptables, renderNftables, type RenderIptablesOptions } from './render'
export {
  applyCapture,
  enableListenerHandover,
  inspectCapture,
  removeCapture,
  type ApplyCaptureOptions,
  type ApplyCaptureResult,
  type CaptureBackend,
  type CaptureInspection,
  type InspectCaptureOptions,
  type RemoveCaptureOptions,
  type RemoveCaptureResult,
} from './capture'
export {
  PROBE_IPTABLES_CHAIN,
  PROBE_NFT_TABLE,
  probeSnatRules,
  renderProbeIptables,
  renderProbeNftables,
  resolveProbeSnatConfig,
  type ProbeSnatConfig,
  type ProbeSnatRule,
  type ProbeSnatRuleSet,
  type ResolvedProbeSnatConfig,
} from './probe-rules'
export {
  applyProbeSnat,
  inspectProbeSnat,
  removeProbeSnat,
  type ApplyProbeSnatOptions,
  type InspectProbeSnatOptions,
  type ProbeSnatInspection,
} from './probe-snat'
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
} from '@ambientkit/core'
export {
  openNetns,
  ownNetnsSockets,
  type Netns,
  type NetnsConnectFdOptions,
  type NetnsListenFdOptions,
  type NetnsConnectOptions,
  type NetnsExecOptions,
  type NetnsExecResult,
  type NetnsListenOptions,
  type NetnsUdpFdOptions,
  type NetnsUdpOptions,
} from './netns'
export { watchRuleset, type RulesetWatch } from './watch'
export { connectSeqpacket, type SeqpacketMessage, type SeqpacketReceiveOptions, type SeqpacketSocket } from './seqpacket'
export {
  boundAddress,
  getSocketMark,
  originalDestination,
  peerCredentials,
  readSocketOptions,
  setSocketMark,
  type PeerCredentials,
  type SocketLike,
  type SocketOptions,
} from './sockets'
