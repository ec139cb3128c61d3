import { AmbientError, CoreErrorCode, type AcceptedSocket, type SocketAddress } from '@ambientkit/core'
import type { AccessLogPeer, ConnectionOutcome } from '../access-log'
import { asSocket, resetConnection } from '../transport/connection'
import type { HboneDecision, HboneRequest, HboneTunnelRecord, TransportServerOptions, UpstreamConnectOptions } from '../transport/contract'
import type { ConnectionRecord } from './connections'
import { appConnectOptions, peerOf, workloadPeer, type WorkloadContext } from './context'
import { forwardedService, parseBaggage, withBaggage } from './peer-headers'
import { ignore, spliced } from './outbound'
import { authorizeInbound } from './route'

/**
 * The inbound side of a workload proxy: tunnels arriving on 15008 (the
 * transport's server, with the decision and connector below) and plaintext
 * connections captured to 15006. Both are authorized by the same policies
 * ({@link authorizeInbound}) and connect to the app from inside the pod.
 */

/** The transport server options of a workload's inbound HBONE: decide, connect, and close each tunnel's record. */
export function inboundHbone(context: WorkloadContext): Pick<TransportServerOptions, 'decide' | 'connect' | 'onTunnel'> {
  return {
    decide: (request) => decide(context, request),
    connect: (destination, options) => connectTunnel(context, destination, options),
    onTunnel: (record) => tunnelEnded(context, record),
  }
}

function decide(context: WorkloadContext, request: HboneRequest): HboneDecision {
  const decision = authorizeInbound(request.destination, { address: request.peerAddress.address, identity: request.peerIdentity }, {
    ...context,
    policies: context.policies.list(),
    plaintext: context.inboundPlaintext,
  })
  if (!decision.allowed) {
    if (decision.outcome === 'refused') return { action: 'not-served', reason: decision.reason }
    return { action: 'deny', reason: decision.reason, ...(decision.policy === undefined ? {} : { policy: decision.policy }) }
  }
  // The connection's record from here on: the server reports the tunnel's end with it as context.
  const record = context.connections.start('inbound-hbone', sourceOf(context, request), workloadPeer(context.workload, request.destination, context.identity))
  record.protocol = request.protocol
  const service = forwardedService(context.registry, context.workload, request.forwardedHost)
  if (service !== undefined) {
    record.service = service.hostname
    record.serviceNamespace = service.namespace
  }
  record.authorization = decision.connection
  if (decision.policy !== undefined) record.policy = decision.policy
  return { action: 'serve', context: record, ...(decision.policy === undefined ? {} : { policy: decision.policy }) }
}

async function connectTunnel(context: WorkloadContext, destination: SocketAddress, options: UpstreamConnectOptions): Promise<number> {
  const record = options.context as ConnectionRecord
  const attempt = new AbortController()
  const onAbort = (): void => attempt.abort(options.signal.reason)
  options.signal.addEventListener('abort', onAbort, { once: true })
  if (options.signal.aborted) onAbort()
  record.onTerminate(() => attempt.abort(new AmbientError(CoreErrorCode.Aborted, record.terminatedBy ?? 'terminated')))
  try {
    const fd = await context.netns.connectFd(appConnectOptions(context, destination, attempt.signal, options.request.forwardedFor ?? options.request.peerAddress.address))
    served(record, options.tunnel)
    return fd
  } finally {
    options.signal.removeEventListener('abort', onAbort)
  }
}

/**
 * Connected to the app: the record opens, and terminating it resets the
 * tunnel (which resets the app's connection too). A function of its own so
 * the closure an established tunnel keeps holds only the tunnel, not the
 * connect attempt's controller, options and request.
 */
function served(record: ConnectionRecord, tunnel: UpstreamConnectOptions['tunnel']): void {
  record.onTerminate(() => tunnel.reset())
  record.open()
}

function tunnelEnded(context: WorkloadContext, tunnel: HboneTunnelRecord): void {
  const bytes = { bytesSent: tunnel.bytesReceived, bytesReceived: tunnel.bytesSent }
  const reason = tunnel.reason ?? tunnel.error?.message
  const end = { outcome: tunnelOutcome(tunnel), ...bytes, ...(reason === undefined ? {} : { reason }) }
  const served = tunnel.context as ConnectionRecord | undefined
  if (served !== undefined) {
    served.close(end)
    return
  }
  // Refused before a record was made (bad request, not served, denied): one made and closed at once.
  const source = sourceOf(context, { peerAddress: tunnel.peerAddress, peerIdentity: tunnel.peerIdentity })
  const destination = tunnel.destination === undefined
    ? { address: tunnel.authority ?? 'unknown' }
    : workloadPeer(context.workload, tunnel.destination, context.identity)
  const record = context.connections.start('inbound-hbone', source, destination)
  record.protocol = tunnel.protocol
  if (tunnel.policy !== undefined) record.policy = tunnel.policy
  record.close(end)
}

/** How a `CONNECT`'s end reads in the access log. */
function tunnelOutcome(tunnel: HboneTunnelRecord): ConnectionOutcome {
  if (tunnel.status === 401) return 'denied'
  if (tunnel.status === 400 || (tunnel.status === 503 && tunnel.reason !== 'upstream-connect-failed')) return 'refused'
  if (tunnel.status !== 200) return 'failed'
  return tunnel.outcome === 'closed' ? 'closed' : 'reset'
}

/** The source of a `CONNECT`: the workload the registry knows at its address, else what its `baggage` says. */
function sourceOf(context: WorkloadContext, request: Pick<HboneRequest, 'peerAddress' | 'peerIdentity' | 'baggage'>): AccessLogPeer {
  const peer = { ...peerOf(context.registry, request.peerAddress.address, request.peerAddress.port), identity: request.peerIdentity }
  // Baggage only completes a peer the registry does not know: not parsed for the others.
  return peer.workload === undefined ? withBaggage(peer, parseBaggage(request.baggage)) : peer
}

/** The inbound plaintext listener (15006): authorized without an identity (or refused in strict mode), then spliced with the app. */
export function onInboundPlaintext(context: WorkloadContext, { fd, remote }: AcceptedSocket): void {
  if (context.stopping()) {
    resetConnection(fd)
    return
  }
  let destination: SocketAddress
  try {
    destination = context.netns.originalDestination(fd, remote.family)
  } catch (err) {
    context.logger.warn({ err }, 'inbound connection without an original destination')
    resetConnection(fd)
    return
  }
  const record = context.connections.start('inbound-plaintext', peerOf(context.registry, remote.address, remote.port), workloadPeer(context.workload, destination))
  const decision = authorizeInbound(destination, { address: remote.address }, { ...context, policies: context.policies.list(), plaintext: context.inboundPlaintext })
  if (decision.policy !== undefined) record.policy = decision.policy
  if (!decision.allowed) {
    resetConnection(fd)
    record.close({ outcome: decision.outcome, reason: decision.reason })
    return
  }
  record.authorization = decision.connection
  void connectPlaintext(context, fd, destination, remote.address, record)
}

async function connectPlaintext(context: WorkloadContext, fd: number, destination: SocketAddress, clientAddress: string, record: ConnectionRecord): Promise<void> {
  const client = asSocket(fd, true)
  const attempt = new AbortController()
  const onClose = (): void => attempt.abort(new AmbientError(CoreErrorCode.Aborted, 'client closed before the app answered'))
  client.on('error', ignore)
  client.once('close', onClose)
  record.onTerminate(() => attempt.abort(new AmbientError(CoreErrorCode.Aborted, record.terminatedBy ?? 'terminated')))
  let app: number
  try {
    app = await context.netns.connectFd(appConnectOptions(context, destination, attempt.signal, clientAddress))
  } catch (err) {
    client.off('close', onClose)
    if (!client.destroyed) client.resetAndDestroy()
    record.close({ outcome: 'failed', reason: `connect to the app failed: ${(err as Error).message}` })
    return
  }
  client.off('close', onClose)
  spliced(record, client, asSocket(app, true))
}
