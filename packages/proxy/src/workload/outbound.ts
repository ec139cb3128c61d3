import { AmbientError, CoreErrorCode, isAmbientError, PROXY_MARK, type AcceptedSocket } from '@ambientkit/core'
import type { AccessLogPeer } from '../access-log'
import { startSocketSplice } from '../splice-sockets'
import { asSocket, resetConnection } from '../transport/connection'
import type { HboneTunnel } from '../transport/contract'
import type { ConnectionRecord } from './connections'
import { peerOf, workloadNames, workloadPeer, type WorkloadContext } from './context'
import { outboundHeaders } from './peer-headers'
import { routeOutbound, type OutboundRoute } from './route'

/**
 * The outbound listener (15001): a captured connection of the pod's app,
 * routed by its original destination ({@link routeOutbound}) and carried
 * through a tunnel (the proxy's transport) or passed through as plain TCP.
 */
export function onOutbound(context: WorkloadContext, { fd, remote }: AcceptedSocket): void {
  if (context.stopping()) {
    resetConnection(fd)
    return
  }
  let original
  try {
    original = context.netns.originalDestination(fd, remote.family)
  } catch (err) {
    context.logger.warn({ err }, 'outbound connection without an original destination')
    resetConnection(fd)
    return
  }
  const route = routeOutbound(original, context)
  const source: AccessLogPeer = { ...peerOf(context.registry, remote.address, remote.port), ...workloadNames(context.workload), identity: context.identity }
  const record = context.connections.start('outbound', source, destinationOf(route))
  if (route.kind !== 'refuse' && route.service !== undefined) {
    record.service = route.service
    record.serviceNamespace = route.serviceNamespace
  }
  switch (route.kind) {
    case 'refuse':
      resetConnection(fd)
      record.close({ outcome: 'refused', reason: route.reason })
      return
    case 'passthrough':
      void passThrough(context, fd, route.destination, record)
      return
    case 'tunnel':
      record.protocol = context.client.protocolFor?.(route.destination) ?? 'HBONE'
      void tunnel(context, fd, route, record)
  }
}

/** Who the access log and metrics name as the destination of a route. */
function destinationOf(route: OutboundRoute): AccessLogPeer {
  const { destination } = route
  if (route.kind === 'tunnel') return workloadPeer(route.target, destination, route.expectedIdentity)
  if (route.kind === 'passthrough' && route.target !== undefined) return workloadPeer(route.target, destination)
  return { address: destination.address, port: destination.port }
}

/** Through the transport to a mesh workload: the app's descriptor is the transport's from here on. */
async function tunnel(context: WorkloadContext, fd: number, route: Extract<OutboundRoute, { kind: 'tunnel' }>, record: ConnectionRecord): Promise<void> {
  const attempt = new AbortController()
  record.onTerminate(() => attempt.abort(new AmbientError(CoreErrorCode.Aborted, record.terminatedBy ?? 'terminated')))
  let opened: HboneTunnel
  try {
    opened = await context.client.open(fd, route.destination, {
      identity: context.identity,
      expectedIdentities: [route.expectedIdentity],
      ...(route.sourceAddress === undefined ? {} : { sourceAddress: route.sourceAddress }),
      headers: outboundHeaders(context.workload, record.source, route.service),
      signal: attempt.signal,
    })
  } catch (err) {
    const status = isAmbientError(err) ? (err.details.status as number | undefined) : undefined
    record.close({ outcome: status === 401 ? 'denied' : 'failed', reason: `HBONE connect failed: ${(err as Error).message}` })
    return
  }
  carried(record, opened)
}

/** An established tunnel: the record opens, and closes when the tunnel does. A method of its own so an idle tunnel keeps only these two. */
function carried(record: ConnectionRecord, opened: HboneTunnel): void {
  record.protocol = opened.protocol
  record.onTerminate(() => opened.reset())
  record.open()
  opened.onClose((result) =>
    record.close({
      outcome: result.outcome === 'closed' ? 'closed' : 'reset',
      bytesSent: result.socketBytesRead,
      bytesReceived: result.socketBytesWritten,
      ...(result.error === undefined ? {} : { reason: result.error.message }),
    }),
  )
}

/** Plain TCP to a destination outside the mesh, from inside the pod (mark 0x539), spliced in JavaScript. */
async function passThrough(context: WorkloadContext, fd: number, destination: { address: string; port: number }, record: ConnectionRecord): Promise<void> {
  const app = asSocket(fd, true)
  const attempt = new AbortController()
  const onClose = (): void => attempt.abort(new AmbientError(CoreErrorCode.Aborted, 'application closed before the upstream was ready'))
  app.on('error', ignore)
  app.once('close', onClose)
  record.onTerminate(() => attempt.abort(new AmbientError(CoreErrorCode.Aborted, record.terminatedBy ?? 'terminated')))
  let upstream: number
  try {
    upstream = await context.netns.connectFd({ host: destination.address, port: destination.port, mark: PROXY_MARK, signal: attempt.signal })
  } catch (err) {
    app.off('close', onClose)
    if (!app.destroyed) app.resetAndDestroy()
    record.close({ outcome: 'failed', reason: `passthrough connect failed: ${(err as Error).message}` })
    return
  }
  app.off('close', onClose)
  spliced(record, app, asSocket(upstream, true))
}

/** Two sockets spliced for a record: it opens now and closes with the splice. */
export function spliced(record: ConnectionRecord, client: ReturnType<typeof asSocket>, upstream: ReturnType<typeof asSocket>): void {
  record.onTerminate(() => {
    // The splice resets the other side and reports.
    if (!client.destroyed) client.resetAndDestroy()
  })
  record.open()
  startSocketSplice(client, upstream, (result) =>
    record.close({ outcome: result.outcome, bytesSent: result.aToB, bytesReceived: result.bToA, ...(result.error === undefined ? {} : { reason: result.error.message }) }),
  )
  client.off('error', ignore)
}

/** The `error` listener of a socket until its splice listens for errors. */
export function ignore(): void {}
