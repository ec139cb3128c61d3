import { X509Certificate, createPrivateKey } from 'node:crypto'
import { isIP } from 'node:net'
import * as grpc from '@grpc/grpc-js'
import { AmbientError, abortError, invalidArgument, silentLogger, throwIfAborted, type Logger } from '@ambientkit/core'
import {
  IdentityErrorCode, SpiffeId, TrustBundle, createTrustBundleSet, type IdentityFetchOptions, type IdentitySource, type JwtSvid,
  type JwtSvidFetchOptions, type X509Svid,
} from '@ambientkit/identity'
import { SECURITY_HEADER, workloadApiService, type JwtSvidResponse, type X509SvidResponse } from './proto'

/** Options of {@link createWorkloadApiSource}. */
export interface WorkloadApiSourceOptions {
  /**
   * The Workload API endpoint: `unix:///absolute/path` or `tcp://<ip>:<port>`
   * (SPIFFE Workload Endpoint §4). Default: the `SPIFFE_ENDPOINT_SOCKET`
   * environment variable (a SPIRE agent's is typically
   * `unix:///tmp/spire-agent/public/api.sock`).
   */
  readonly address?: string
  /** How long a first `fetch()` waits for the stream to carry the identity. Default 30 000 ms. */
  readonly fetchTimeoutMs?: number
  /** Default: silent. */
  readonly logger?: Logger
}

/** An `IdentitySource` fed by a SPIFFE Workload API stream. */
export interface WorkloadApiSource extends IdentitySource {
  fetchJwtSvid(id: SpiffeId, options: JwtSvidFetchOptions): Promise<JwtSvid>
  subscribe(listener: (svid: X509Svid) => void): () => void
  close(): Promise<void>
}

/** The gRPC target of a Workload API address, checked as go-spiffe checks it. */
export function workloadApiTarget(address: string | undefined): string {
  if (address === undefined || address === '') throw invalidArgument('address', address, 'unix:///path or tcp://ip:port (or SPIFFE_ENDPOINT_SOCKET)')
  let url: URL
  try {
    url = new URL(address)
  } catch {
    throw invalidArgument('address', address, 'unix:///path or tcp://ip:port')
  }
  if (url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') throw invalidArgument('address', address, 'an address without query, fragment or user')
  if (url.protocol === 'unix:') {
    if (url.host !== '' || !url.pathname.startsWith('/')) throw invalidArgument('address', address, 'unix:///absolute/path (no authority)')
    return `unix://${url.pathname}`
  }
  if (url.protocol === 'tcp:') {
    const host = url.hostname.replace(/^\[|\]$/g, '')
    if (isIP(host) === 0 || url.port === '' || (url.pathname !== '' && url.pathname !== '/')) throw invalidArgument('address', address, 'tcp://<ip>:<port> (an IP literal, no path)')
    return `${url.hostname}:${url.port}`
  }
  throw invalidArgument('address', address, 'a unix:// or tcp:// address')
}

/** Concatenated DER certificates → each one's DER (ASN.1 SEQUENCE lengths). */
export function splitDer(buffer: Buffer): Buffer[] {
  const out: Buffer[] = []
  let offset = 0
  while (offset < buffer.length) {
    if (buffer[offset] !== 0x30 || offset + 2 > buffer.length) throw new Error('not a DER SEQUENCE')
    let length = buffer[offset + 1]!
    let header = 2
    if (length & 0x80) {
      const bytes = length & 0x7f
      if (bytes === 0 || bytes > 4 || offset + 2 + bytes > buffer.length) throw new Error('bad DER length')
      length = buffer.readUIntBE(offset + 2, bytes)
      header += bytes
    }
    if (offset + header + length > buffer.length) throw new Error('truncated DER')
    out.push(buffer.subarray(offset, offset + header + length))
    offset += header + length
  }
  return out
}

function unavailable(message: string, cause?: unknown): AmbientError {
  return new AmbientError(IdentityErrorCode.IdentityUnavailable, message, { cause })
}

/**
 * An `IdentitySource` that takes SVIDs and bundles from a SPIFFE
 * Workload API (a SPIRE agent's, or this package's server): one
 * `FetchX509SVID` stream, every message the full state (bundles absent from
 * it are dropped), renewals announced to the identity manager as they
 * arrive. The stream is reopened at once when it ends and with go-spiffe's
 * backoff (1 s, 2 s... 30 s) when it fails, except on INVALID_ARGUMENT,
 * which the spec says not to retry. `fetch(id)` returns the stream's SVID
 * for `id`, and rejects while the source has not renewed the one last
 * returned (the manager keeps the current SVID and retries).
 *
 * @example
 * ```ts
 * import { createIdentityManager } from '@ambientkit/identity'
 * import { createWorkloadApiSource } from '@ambientkit/workload-api'
 *
 * const identities = createIdentityManager({ source: createWorkloadApiSource({ address: 'unix:///tmp/spire-agent/public/api.sock' }) })
 * const svid = await identities.get('spiffe://example.org/ns/shop/sa/api')
 * ```
 */
export function createWorkloadApiSource(options: WorkloadApiSourceOptions = {}): WorkloadApiSource {
  const target = workloadApiTarget(options.address ?? process.env.SPIFFE_ENDPOINT_SOCKET)
  const fetchTimeoutMs = options.fetchTimeoutMs ?? 30_000
  const log = (options.logger ?? silentLogger).child({ component: 'workload-api-client' })
  const Client = workloadApiService()
  const client = new Client(target, grpc.credentials.createInsecure())
  const bundles = createTrustBundleSet()
  const latest = new Map<string, X509Svid>()
  const listeners = new Set<(svid: X509Svid) => void>()
  const waiters = new Set<() => void>()
  let fatal: AmbientError | undefined
  let closed = false
  let stream: grpc.ClientReadableStream<X509SvidResponse> | undefined
  let timer: NodeJS.Timeout | undefined
  let failures = 0

  const metadata = (): grpc.Metadata => {
    const md = new grpc.Metadata()
    md.set(SECURITY_HEADER, 'true')
    return md
  }

  const apply = (message: X509SvidResponse): void => {
    const svids: X509Svid[] = []
    const seen = new Map<string, TrustBundle>()
    for (const entry of message.svids ?? []) {
      try {
        const id = SpiffeId.parse(entry.spiffe_id)
        const chain = splitDer(entry.x509_svid).map((der) => new X509Certificate(der))
        if (chain.length === 0 || entry.x509_svid_key.length === 0 || entry.bundle.length === 0) throw new Error('a required field is empty')
        const leaf = chain[0]!
        svids.push({
          id,
          certificateChainPem: chain.map((c) => c.toString()).join(''),
          privateKeyPem: createPrivateKey({ key: entry.x509_svid_key, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string,
          notBefore: new Date(leaf.validFrom),
          notAfter: new Date(leaf.validTo),
        })
        seen.set(id.trustDomain.name, TrustBundle.create({ trustDomain: id.trustDomain, x509Authorities: splitDer(entry.bundle) }))
      } catch (err) {
        // Workload API §5.3: a client SHOULD discard a message with a required field at its default.
        log.warn({ err, id: entry.spiffe_id }, 'discarding a malformed Workload API message')
        return
      }
    }
    for (const [key, der] of Object.entries(message.federated_bundles ?? {})) {
      try {
        seen.set(SpiffeId.parse(key).trustDomain.name, TrustBundle.create({ trustDomain: SpiffeId.parse(key).trustDomain, x509Authorities: splitDer(der) }))
      } catch (err) {
        log.warn({ err, trustDomain: key }, 'ignoring a malformed federated bundle')
      }
    }
    // Every message is the whole state: what it lacks is gone.
    for (const held of bundles.all()) if (!seen.has(held.trustDomain.name)) bundles.delete(held.trustDomain)
    for (const bundle of seen.values()) {
      const held = bundles.get(bundle.trustDomain)
      if (held === undefined || held.x509AuthoritiesPem() !== bundle.x509AuthoritiesPem()) bundles.set(TrustBundle.create({ trustDomain: bundle.trustDomain, x509Authorities: bundle.x509Authorities, jwtAuthorities: held?.jwtAuthorities ?? [] }))
    }
    latest.clear()
    for (const svid of svids) {
      latest.set(svid.id.toString(), svid)
      for (const listener of [...listeners]) listener(svid)
    }
    for (const wake of [...waiters]) wake()
  }

  const open = (): void => {
    if (closed) return
    const call = (client as unknown as { FetchX509SVID(r: object, m: grpc.Metadata): grpc.ClientReadableStream<X509SvidResponse> }).FetchX509SVID({}, metadata())
    stream = call
    call.on('data', (message: X509SvidResponse) => {
      failures = 0
      apply(message)
    })
    call.on('error', (err: grpc.ServiceError) => {
      if (closed || err.code === grpc.status.CANCELLED) return
      if (err.code === grpc.status.INVALID_ARGUMENT) {
        fatal = unavailable(`the Workload API refused the request: ${err.details}`, err)
        for (const wake of [...waiters]) wake()
        return
      }
      failures += 1
      log.debug({ err, failures }, 'Workload API stream failed')
    })
    call.on('close', () => {
      if (closed || fatal !== undefined) return
      // go-spiffe: linear backoff, 1 s per failure, at most 30 s; a clean end reconnects at once.
      const delay = Math.min(30_000, failures * 1000)
      timer = setTimeout(() => {
        timer = undefined
        open()
      }, delay)
      timer.unref()
    })
  }
  open()

  const waitFor = (check: () => boolean, signal: AbortSignal | undefined, what: string): Promise<void> =>
    new Promise((resolve, reject) => {
      const done = (err?: Error): void => {
        clearTimeout(deadline)
        waiters.delete(wake)
        signal?.removeEventListener('abort', onAbort)
        if (err) reject(err)
        else resolve()
      }
      const wake = (): void => {
        if (fatal !== undefined) done(fatal)
        else if (check()) done()
      }
      const onAbort = (): void => done(abortError(signal!, what))
      const deadline = setTimeout(() => done(unavailable(`the Workload API gave no ${what} within ${fetchTimeoutMs} ms`)), fetchTimeoutMs)
      waiters.add(wake)
      signal?.addEventListener('abort', onAbort, { once: true })
      wake()
    })

  return {
    bundles,
    async fetch(id: SpiffeId, fetchOptions: IdentityFetchOptions): Promise<X509Svid> {
      throwIfAborted(fetchOptions.signal, 'fetch')
      const key = id.toString()
      await waitFor(() => latest.has(key), fetchOptions.signal, `SVID for ${key}`)
      return latest.get(key)!
    },
    subscribe(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    fetchJwtSvid(id: SpiffeId, jwtOptions: JwtSvidFetchOptions): Promise<JwtSvid> {
      return new Promise((resolve, reject) => {
        const call = (client as unknown as { FetchJWTSVID(r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: JwtSvidResponse) => void): grpc.ClientUnaryCall })
          .FetchJWTSVID({ audience: [...jwtOptions.audience], spiffe_id: id.toString() }, metadata(), { deadline: Date.now() + fetchTimeoutMs }, (err, response) => {
            jwtOptions.signal?.removeEventListener('abort', onAbort)
            if (err) return reject(unavailable(`the Workload API refused a JWT-SVID for ${id.toString()}: ${grpc.status[err.code]} ${err.details}`, err))
            const svid = response.svids?.find((s) => s.spiffe_id === id.toString())
            if (svid === undefined) return reject(unavailable(`the Workload API returned no JWT-SVID for ${id.toString()}`))
            const claims = JSON.parse(Buffer.from(svid.svid.split('.')[1] ?? '', 'base64url').toString('utf8') || '{}') as { exp?: number; iat?: number }
            resolve({ id, token: svid.svid, audience: [...jwtOptions.audience], expiresAt: new Date((claims.exp ?? 0) * 1000), issuedAt: new Date((claims.iat ?? Date.now() / 1000) * 1000) })
          })
        const onAbort = (): void => call.cancel()
        jwtOptions.signal?.addEventListener('abort', onAbort, { once: true })
      })
    },
    async close() {
      if (closed) return
      closed = true
      clearTimeout(timer)
      stream?.cancel()
      client.close()
      fatal ??= unavailable('the Workload API source is closed')
      for (const wake of [...waiters]) wake()
    },
  }
}
