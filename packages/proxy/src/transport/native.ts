import { invalidArgument } from '@ambientkit/core'
import { nativeHbone, nativeHboneUnavailable, type NativeAddon } from '../hbone/native'
import { createNativeHboneClient } from '../hbone/native-client'
import { createNativeHboneServer } from '../hbone/native-server'
import type { HboneTransport, TransportClient, TransportClientOptions, TransportServer, TransportServerOptions } from './contract'

/**
 * The native HBONE transport: mutual TLS through the OpenSSL and HTTP/2
 * through the nghttp2 that Node itself links, in this package's addon, on
 * a small pool of data-path threads (`AMBIENTKIT_HBONE_THREADS`, by default
 * one per CPU up to four). A tunnel's bytes never enter JavaScript, which
 * still verifies identities, decides each `CONNECT`, chooses upstreams and
 * hears how each tunnel ended. It carries descriptors only: a client needs
 * `connectSession`, and servers' `connect` must resolve with descriptors
 * (`NetnsSockets.connectFd`).
 *
 * Throws `ERR_AMBIENT_HBONE_NATIVE_UNAVAILABLE` (saying why and how to get
 * it) when the addon cannot be loaded on this machine.
 *
 * @example
 * ```ts
 * import type { IdentityManager } from '@ambientkit/identity'
 * import { createNativeTransport } from '@ambientkit/proxy'
 * import { ownNetnsSockets } from '@ambientkit/redirect'
 *
 * declare const identities: IdentityManager // holds the SVIDs presented and the bundles servers are verified with
 * const sockets = ownNetnsSockets()
 * const transport = createNativeTransport()
 * const client = transport.createClient({
 *   identities,
 *   connectSession: (address, { signal }) => sockets.connectFd({ host: address.address, port: address.port, signal }),
 * })
 * ```
 */
export function createNativeTransport(): HboneTransport {
  const addon = nativeHbone()
  if (addon === undefined) throw nativeHboneUnavailable()!
  return nativeTransport(addon)
}

function nativeTransport(addon: NativeAddon): HboneTransport {
  return Object.freeze({
    name: 'native',
    createClient(options: TransportClientOptions): TransportClient {
      if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
      const { connectSession } = options
      if (typeof connectSession !== 'function') {
        throw invalidArgument('connectSession', connectSession, 'a function resolving with a connected descriptor (the native transport carries descriptors)')
      }
      return createNativeHboneClient({ ...options, addon, connectSession })
    },
    async createServer(options: TransportServerOptions): Promise<TransportServer> {
      if (typeof options !== 'object' || options === null) throw invalidArgument('options', options, 'an object')
      const server = createNativeHboneServer({ ...options, addon })
      // Ready means the SVID it presents is at hand.
      try {
        await options.identities.get(options.identity)
      } catch (err) {
        await server.close()
        throw err
      }
      return server
    },
  })
}
