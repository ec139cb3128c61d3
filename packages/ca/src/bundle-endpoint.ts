import { createServer, request, type Server } from 'node:https'
import { createSecureContext, type SecureContextOptions } from 'node:tls'
import { AmbientError, invalidArgument, silentLogger, type AbortOptions, type Closable, type Logger } from '@ambientkit/core'
import { TrustBundle, TrustDomain, type TrustBundleSet } from '@ambientkit/identity'
import { CaErrorCode } from './errors'
import { boundAddress, closeAt, listenAt, type ListenAddress } from './listen'

/** Options of {@link createBundleEndpointServer}. */
export interface BundleEndpointServerOptions {
  /** The bundles served; the one of `trustDomain` is the document at `/`. */
  readonly bundles: TrustBundleSet
  /** The trust domain whose bundle the endpoint serves. */
  readonly trustDomain: TrustDomain | string
  /**
   * The server's Web PKI certificate and key (the `https_web` profile:
   * clients verify it with their usual roots and host name), as PEM, or a
   * function returning the current ones (called per connection, so a renewed
   * certificate is served without restart).
   */
  readonly certificate: Pick<SecureContextOptions, 'key' | 'cert'> | (() => Pick<SecureContextOptions, 'key' | 'cert'>)
  readonly listen: ListenAddress
  /** `spiffe_refresh_hint` added when the bundle has none, seconds. Default 300. */
  readonly refreshHintSeconds?: number
  /** Default: silent. */
  readonly logger?: Logger
}

/** A running bundle endpoint. */
export interface BundleEndpointServer extends Closable {
  address(): ListenAddress
}

/**
 * Serves a trust domain's bundle at a SPIFFE bundle endpoint (SPIFFE
 * Federation §4, profile `https_web`): `GET /` answers the SPIFFE bundle
 * document (JWKS, `application/json`) as it is now, with
 * `spiffe_sequence` increasing with every change and a refresh hint, so a
 * federated trust domain follows root rotations by polling.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs'
 * import type { TrustBundleSet } from '@ambientkit/identity'
 * import { createBundleEndpointServer } from '@ambientkit/ca'
 *
 * declare const bundles: TrustBundleSet // the trust domain's bundles, kept current
 * const endpoint = await createBundleEndpointServer({
 *   bundles, trustDomain: 'cluster.local', listen: { host: '0.0.0.0', port: 8443 },
 *   certificate: { key: readFileSync('tls.key'), cert: readFileSync('tls.crt') },
 * })
 * ```
 */
export async function createBundleEndpointServer(options: BundleEndpointServerOptions): Promise<BundleEndpointServer> {
  const trustDomain = typeof options.trustDomain === 'string' ? TrustDomain.parse(options.trustDomain) : options.trustDomain
  const refreshHint = options.refreshHintSeconds ?? 300
  const log = (options.logger ?? silentLogger).child({ component: 'bundle-endpoint' })
  const certificate = typeof options.certificate === 'function' ? options.certificate : () => options.certificate as Pick<SecureContextOptions, 'key' | 'cert'>
  // Federation §4.2.1: the sequence number must increase with every change of the document.
  let sequence = Date.now()
  let document = ''
  const render = (): void => {
    const bundle = options.bundles.get(trustDomain)
    if (bundle === undefined) {
      document = ''
      return
    }
    sequence = Math.max(sequence + 1, bundle.sequenceNumber ?? 0)
    document = TrustBundle.create({
      trustDomain,
      x509Authorities: bundle.x509Authorities,
      jwtAuthorities: bundle.jwtAuthorities,
      sequenceNumber: sequence,
      refreshHintSeconds: bundle.refreshHintSeconds ?? refreshHint,
    }).toJson()
  }
  render()
  const off = options.bundles.subscribe((change) => {
    if (change.trustDomain.equals(trustDomain)) render()
  })
  const server: Server = createServer({
    ...certificate(),
    minVersion: 'TLSv1.2',
    SNICallback: (_name, done) => {
      try {
        done(null, createSecureContext(certificate()))
      } catch (err) {
        done(err as Error)
      }
    },
  }, (req, res) => {
    if (req.method !== 'GET' || (req.url !== '/' && req.url !== '')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('the bundle is at GET /\n')
      return
    }
    if (document === '') {
      res.writeHead(503, { 'content-type': 'text/plain' }).end(`no bundle for ${trustDomain.name} yet\n`)
      return
    }
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(document)
  })
  server.headersTimeout = 10_000
  server.requestTimeout = 10_000
  server.on('tlsClientError', (err) => log.debug({ err }, 'bundle endpoint TLS handshake failed'))
  await listenAt(server, options.listen)
  let closing: Promise<void> | undefined
  return {
    address: () => boundAddress(server, options.listen),
    close() {
      closing ??= (async () => {
        off()
        const closed = closeAt(server, options.listen)
        server.closeAllConnections()
        await closed
      })()
      return closing
    },
  }
}

/** Options of {@link fetchBundleEndpoint}. */
export interface FetchBundleEndpointOptions extends AbortOptions {
  /** The trust domain the endpoint serves: the document is read as its bundle. */
  readonly trustDomain: TrustDomain | string
  /** Roots to verify the endpoint's certificate with (`https_web`: default the system's). */
  readonly ca?: string
  /** Time limit. Default 10 000 ms. */
  readonly timeoutMs?: number
}

// A bundle of a few roots and keys is a few KiB; this bounds a hostile endpoint.
const MAX_BUNDLE_BYTES = 1024 * 1024

/** Reads a trust domain's bundle from its SPIFFE bundle endpoint (`https_web`). */
export function fetchBundleEndpoint(url: string, options: FetchBundleEndpointOptions): Promise<TrustBundle> {
  const parsed = new URL(url)
  if (parsed.protocol !== 'https:') throw invalidArgument('url', url, 'an https:// bundle endpoint URL (https_web profile)')
  const timeoutMs = options.timeoutMs ?? 10_000
  return new Promise((resolve, reject) => {
    const fail = (message: string, cause?: unknown): void => reject(new AmbientError(CaErrorCode.BundleEndpoint, `bundle endpoint ${url}: ${message}`, { cause, details: { url } }))
    const req = request(parsed, { method: 'GET', timeout: timeoutMs, ...(options.ca ? { ca: options.ca } : {}), ...(options.signal ? { signal: options.signal } : {}) }, (res) => {
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (chunk: Buffer) => {
        size += chunk.length
        if (size > MAX_BUNDLE_BYTES) res.destroy(new Error(`larger than ${MAX_BUNDLE_BYTES} bytes`))
        else chunks.push(chunk)
      })
      res.on('error', (err) => fail(err.message, err))
      res.on('end', () => {
        if (res.statusCode !== 200) return fail(`HTTP ${res.statusCode}`)
        try {
          resolve(TrustBundle.parse(options.trustDomain, Buffer.concat(chunks).toString('utf8')))
        } catch (err) {
          fail((err as Error).message, err)
        }
      })
    })
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)))
    req.on('error', (err) => fail(err.message, err))
    req.end()
  })
}
