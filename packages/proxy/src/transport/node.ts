import type { ClientHttp2Stream } from 'node:http2'
import type { Socket } from 'node:net'
import { AmbientError, CoreErrorCode, invalidArgument, type SocketAddress } from '@ambientkit/core'
import { tlsClientOptions, tlsServerOptions } from '@ambientkit/identity'
import { createHboneClient, type HboneClient } from '../hbone/client'
import { createHboneServer } from '../hbone/server'
import { resetTunnel, startTunnelSplice } from '../hbone/splice'
import { asSocket } from './connection'
import type {
  CarriedConnection,
  HboneTransport,
  HboneTunnel,
  OpenOptions,
  TransportClient,
  TransportClientOptions,
  TransportServer,
  TransportServerOptions,
} from './contract'
import { SettlingTunnel } from './tunnel'

/**
 * The HBONE transport on Node's own `tls` and `http2`: every byte of a
 * tunnel goes through JavaScript. It runs wherever Node runs (no addon,
 * any platform) and takes sockets or descriptors. Its clients and servers
 * are {@link createHboneClient} and {@link createHboneServer}, with TLS from
 * the identity manager (`@ambientkit/identity`'s `tlsClientOptions` and
 * `tlsServerOptions`: SVIDs presented and rotated, peers verified against
 * the bundle of their own trust domain).
 *
 * @example
 * ```ts
 * import type { Socket } from 'node:net'
 * import type { NetnsSockets } from '@ambientkit/core'
 * import type { IdentityManager } from '@ambientkit/identity'
 * import { createNodeTransport } from '@ambientkit/proxy'
 *
 * declare const identities: IdentityManager // holds the SVIDs presented and the bundles peers are verified with
 * declare const sockets: NetnsSockets // where upstream connections are made (redirect's openNetns or ownNetnsSockets)
 * declare const appSocket: Socket // the application's connection, accepted on 15001
 * const transport = createNodeTransport()
 * const server = await transport.createServer({
 *   identities, identity: 'spiffe://cluster.local/ns/shop/sa/api',
 *   decide: () => ({ action: 'serve' }),
 *   connect: (destination, { signal }) => sockets.connectFd({ host: destination.address, port: destination.port, signal }),
 * })
 * const client = transport.createClient({ identities })
 * const tunnel = await client.open(appSocket, { address: '10.1.2.5', port: 8080, family: 4 }, {
 *   identity: 'spiffe://cluster.local/ns/shop/sa/web',
 *   expectedIdentities: ['spiffe://cluster.local/ns/shop/sa/api'],
 * })
 * tunnel.onClose((result) => console.log(result.outcome))
 * ```
 */
export function createNodeTransport(): HboneTransport {
  return NODE_TRANSPORT
}

const NODE_TRANSPORT: HboneTransport = Object.freeze({
  name: 'node',
  createClient(options: TransportClientOptions): TransportClient {
    if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
    const { identities, connectSession } = options
    const client = createHboneClient({
      ...options,
      // A session is keyed by its expected identities, so the handshake itself refuses any other server.
      tls: (identity, { signal, expectedIdentities }) => tlsClientOptions({ manager: identities, id: identity!, expectedPeers: expectedIdentities, alpnProtocols: ['h2'], signal }),
      ...(connectSession === undefined
        ? {}
        : {
            // The session's own TCP connection: a FIN from the server ends it (no half-open).
            socketFactory: async (address: SocketAddress, { signal, identity, sourceAddress }: { signal: AbortSignal; identity?: string; sourceAddress?: string }) =>
              asSocket(await connectSession(address, { signal, identity: identity!, ...(sourceAddress === undefined ? {} : { sourceAddress }) }), false),
          }),
    })
    return {
      open: (app, destination, openOptions) => openTunnel(client, app, destination, openOptions),
      stats: () => client.stats(),
      close: () => client.close(),
    }
  },
  async createServer(options: TransportServerOptions): Promise<TransportServer> {
    if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
    const tls = await tlsServerOptions({ manager: options.identities, id: options.identity, alpnProtocols: ['h2'] })
    return createHboneServer({ ...options, tls })
  },
})

/** Opens a tunnel on the Node client and splices `app` with it; `app` is reset when that fails. */
async function openTunnel(client: HboneClient, app: CarriedConnection, destination: SocketAddress, options: OpenOptions): Promise<HboneTunnel> {
  const socket = asSocket(app, true)
  // Until the splice takes over: a failure must not be unhandled, and a close ends the attempt.
  const attempt = new AbortController()
  const onError = (): void => {}
  const onClose = (): void => attempt.abort(new AmbientError(CoreErrorCode.Aborted, 'the application connection closed before its tunnel was ready'))
  const onAbort = (): void => attempt.abort(options.signal?.reason)
  socket.on('error', onError)
  socket.once('close', onClose)
  options.signal?.addEventListener('abort', onAbort, { once: true })
  if (options.signal?.aborted === true) onAbort()
  let stream
  try {
    stream = await client.connect(destination, { ...options, signal: attempt.signal })
  } catch (err) {
    if (!socket.destroyed) socket.resetAndDestroy()
    throw err
  } finally {
    options.signal?.removeEventListener('abort', onAbort)
    socket.off('close', onClose)
  }
  socket.off('error', onError)
  return spliced(socket, stream)
}

/**
 * The tunnel of an opened stream, spliced with the application's socket. A
 * function of its own so that the callback an established tunnel keeps
 * holds neither the attempt's controller nor the options.
 */
function spliced(socket: Socket, stream: ClientHttp2Stream): NodeTunnel {
  const tunnel = new NodeTunnel(socket)
  startTunnelSplice(socket, stream, (result) => tunnel.settle(result))
  // The splice resets the stream when the socket is reset, and the other way round.
  if (socket.destroyed) resetTunnel(stream)
  return tunnel
}

/** A tunnel of the Node transport: the application's socket spliced with an HTTP/2 stream. */
class NodeTunnel extends SettlingTunnel {
  readonly protocol = 'HBONE'

  constructor(readonly socket: Socket) {
    super()
  }

  reset(): void {
    // The splice resets the stream with CONNECT_ERROR when its socket goes.
    if (!this.socket.destroyed) this.socket.resetAndDestroy()
  }
}
