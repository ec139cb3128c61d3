import { X509Certificate, generateKeyPair, type KeyObject } from 'node:crypto'
import { isIP } from 'node:net'
import { checkServerIdentity as checkHostName, type PeerCertificate } from 'node:tls'
import * as grpc from '@grpc/grpc-js'
import { AmbientError, abortError, invalidArgument, silentLogger, throwIfAborted, type Logger } from '@ambientkit/core'
import {
  SpiffeId, TrustBundle, TrustDomain, createCsr, createTrustBundleSet, verifyJwtSvid, verifyX509Svid, type IdentityFetchOptions,
  type IdentitySource, type JwtSvid, type JwtSvidFetchOptions, type X509Svid,
} from '@ambientkit/identity'
import { CaErrorCode, badResponse } from './errors'
import { pemBlocks } from './pem'
import {
  IMPERSONATED_IDENTITY, caServices, stringStruct, type IstioCertificateRequest, type IstioCertificateResponse, type MintJwtSvidRequest,
  type MintJwtSvidResponse, type WatchBundlesResponse,
} from './proto'

/** A value read per request: a string, or a function (re-reading a rotated token file, say). */
export type Refreshable = string | (() => string | Promise<string>)

/** Options of {@link createIstioCaSource}. */
export interface IstioCaSourceOptions {
  /**
   * The CA service: `host:port` or `https://host:port` (istiod:
   * `istiod.istio-system.svc:15012`, ztunnel's `CA_ADDRESS`), or
   * `unix:///absolute/path`.
   */
  readonly address: string
  /** The mesh's trust domain: the bundle this source keeps current. */
  readonly trustDomain: TrustDomain | string
  /**
   * The roots the CA's TLS certificate is verified with before any bundle
   * is known (istiod: `/var/run/secrets/istio/root-cert.pem`, ztunnel's
   * `CA_ROOT_CA`), and the first bundle of the trust domain. Once the CA has
   * answered, its roots (kept current) are used.
   */
  readonly rootCertificates: Refreshable
  /**
   * How the CA's certificate is checked beyond its chain. Default: its DNS
   * names must match the address's host (ztunnel's rule), or `serverName`.
   * `{ spiffeId }`: it must be that X.509-SVID instead (for a unix socket).
   */
  readonly serverIdentity?: { readonly serverName: string } | { readonly spiffeId: SpiffeId | string }
  /** The bearer token sent as `authorization: Bearer <token>`: a projected service-account token, a node credential. Default none. */
  readonly token?: Refreshable
  /** Sent as `clusterid`. Default `'Kubernetes'` (ztunnel's default). */
  readonly clusterId?: string
  /** More metadata sent with every call (ztunnel's `CA_HEADER_<NAME>`). */
  readonly headers?: Readonly<Record<string, string>>
  /**
   * `true` (default, a node agent): ask for the identity through
   * `ImpersonatedIdentity` metadata, which a CA grants only for pods on the
   * caller's node. `false`: ask for the caller's own identity (no metadata).
   */
  readonly impersonate?: boolean
  /** Presented over mutual TLS when it returns an SVID: renewals authenticated by a current SVID. Default none. */
  readonly clientSvid?: () => X509Svid | undefined
  /**
   * Follow the CA's `WatchBundles` stream (an `@ambientkit/ca` server; istiod
   * has none), so root rotations and JWT keys reach this node at once rather
   * than with the next certificate. Default false.
   */
  readonly watchBundles?: boolean
  /** Each call's deadline. Default 10 000 ms. */
  readonly timeoutMs?: number
  /** Default: silent. */
  readonly logger?: Logger
}

/** An `IdentitySource` backed by a CA speaking Istio's certificate API. */
export interface IstioCaSource extends IdentitySource {
  /** JWT-SVIDs from `MeshIdentityService/MintJWTSVID` (an `@ambientkit/ca` server). */
  fetchJwtSvid(id: SpiffeId, options: JwtSvidFetchOptions): Promise<JwtSvid>
  close(): Promise<void>
}

/** istiod's service name, in the certificate istiod serves: the TLS server name when the CA is addressed by IP. */
const ISTIOD_SERVICE_NAME = 'istiod.istio-system.svc'

function parseAddress(address: string): { target: string; host: string } {
  if (typeof address !== 'string' || address === '') throw invalidArgument('address', address, 'host:port, https://host:port or unix:///path')
  if (address.startsWith('unix://')) {
    if (!address.startsWith('unix:///')) throw invalidArgument('address', address, 'unix:///absolute/path')
    return { target: address, host: 'localhost' }
  }
  let stripped = address.replace(/^https?:\/\//, '')
  while (stripped.endsWith('/')) stripped = stripped.slice(0, -1)
  const url = new URL(`https://${stripped}`)
  if (url.port === '') throw invalidArgument('address', address, 'an address with a port (istiod: 15012)')
  return { target: `${url.hostname}:${url.port}`, host: url.hostname.replace(/^\[|\]$/g, '') }
}

const read = async (value: Refreshable): Promise<string> => (typeof value === 'function' ? value() : value)

function generateP256(): Promise<KeyObject> {
  return new Promise((resolve, reject) => generateKeyPair('ec', { namedCurve: 'prime256v1' }, (err, _pub, key) => (err ? reject(err) : resolve(key))))
}

/** The chain Node hands checkServerIdentity, leaf first, as DER. */
function chainOf(cert: PeerCertificate): Buffer[] {
  const chain: Buffer[] = []
  let current: (PeerCertificate & { issuerCertificate?: PeerCertificate }) | undefined = cert
  while (current?.raw !== undefined && chain.length < 8 && !chain.some((der) => der.equals(current!.raw))) {
    chain.push(current.raw)
    current = current.issuerCertificate
  }
  return chain
}

function refused(err: grpc.ServiceError, what: string): AmbientError {
  return new AmbientError(CaErrorCode.Refused, `the CA refused ${what}: ${grpc.status[err.code] ?? err.code} ${err.details}`, {
    cause: err,
    details: { grpcCode: err.code, grpcStatus: grpc.status[err.code] },
  })
}

/**
 * An `IdentitySource` that gets X.509-SVIDs from a CA speaking Istio's
 * certificate API, as ztunnel does from istiod: a fresh ECDSA P-256 key per
 * request (it never leaves this process), a CSR with the identity as its one
 * URI SAN, `authorization: Bearer <token>` and `clusterid` metadata, and
 * `ImpersonatedIdentity` for a node agent. The answer is refused unless the
 * leaf's SAN is the identity asked for, it certifies this key, and it chains
 * to the roots given with it; those roots become the trust domain's bundle
 * only if they share one with the bundle held (a rotation overlaps; a CA
 * never jumps to roots this node has not trusted before). Both answer forms
 * are read: roots last in `cert_chain`, or in `root_cert`.
 *
 * Renewal at half-life with backoff, keeping a still-valid SVID meanwhile,
 * is the identity manager's: give it this source.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs'
 * import { createIdentityManager } from '@ambientkit/identity'
 * import { createIstioCaSource } from '@ambientkit/ca'
 *
 * const source = createIstioCaSource({
 *   address: 'istiod.istio-system.svc:15012',
 *   trustDomain: 'cluster.local',
 *   rootCertificates: () => readFileSync('/var/run/secrets/istio/root-cert.pem', 'utf8'),
 *   token: () => readFileSync('/var/run/secrets/tokens/istio-token', 'utf8'),
 * })
 * const identities = createIdentityManager({ source })
 * const svid = await identities.get('spiffe://cluster.local/ns/shop/sa/api')
 * ```
 */
export function createIstioCaSource(options: IstioCaSourceOptions): IstioCaSource {
  const { target, host } = parseAddress(options.address)
  const trustDomain = typeof options.trustDomain === 'string' ? TrustDomain.parse(options.trustDomain) : options.trustDomain
  const impersonate = options.impersonate ?? true
  const timeoutMs = options.timeoutMs ?? 10_000
  const log = (options.logger ?? silentLogger).child({ component: 'istio-ca-client', address: options.address })
  const serverIdentity = options.serverIdentity
  const expectedServerId = serverIdentity !== undefined && 'spiffeId' in serverIdentity
    ? typeof serverIdentity.spiffeId === 'string' ? SpiffeId.parse(serverIdentity.spiffeId) : serverIdentity.spiffeId
    : undefined
  const serverName = serverIdentity !== undefined && 'serverName' in serverIdentity ? serverIdentity.serverName : host
  const bundles = createTrustBundleSet()
  const services = caServices()
  const lifetime = new AbortController()

  // The channel is rebuilt when what it trusts or presents changes: roots rotate, the client SVID renews.
  let channel: { key: string; certificates: grpc.Client; identity: grpc.Client } | undefined
  const clients = async (): Promise<NonNullable<typeof channel>> => {
    const known = bundles.get(trustDomain)
    const roots = known !== undefined && known.x509Authorities.length > 0 ? known.x509AuthoritiesPem() : await read(options.rootCertificates)
    if (known === undefined) bundles.set(TrustBundle.fromPem(trustDomain, roots))
    const svid = options.clientSvid?.()
    const key = `${roots}\n${svid?.certificateChainPem ?? ''}`
    if (channel?.key === key) return channel
    const credentials = grpc.credentials.createSsl(
      Buffer.from(roots),
      svid ? Buffer.from(svid.privateKeyPem) : null,
      svid ? Buffer.from(svid.certificateChainPem) : null,
      {
        checkServerIdentity: (_name, cert) => {
          if (expectedServerId === undefined) return checkHostName(serverName, cert)
          try {
            const id = verifyX509Svid(chainOf(cert), bundles)
            return id.equals(expectedServerId) ? undefined : new Error(`the CA presented ${id.toString()}, expected ${expectedServerId.toString()}`)
          } catch (err) {
            return err as Error
          }
        },
      },
    )
    const channelOptions: grpc.ChannelOptions = {
      // SNI carries no literal addresses (RFC 6066 §3), and Node refuses one: an IP gets istiod's service name.
      'grpc.ssl_target_name_override': isIP(serverName) === 0 ? serverName : ISTIOD_SERVICE_NAME,
      'grpc.default_authority': serverName,
      // ztunnel's channel: HTTP/2 pings every 30 s, 10 s to answer.
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
    }
    const previous = channel
    channel = {
      key,
      certificates: new services.IstioCertificateService(target, credentials, channelOptions),
      identity: new services.MeshIdentityService(target, credentials, channelOptions),
    }
    // Calls already made on the old channel finish on it.
    previous?.certificates.close()
    previous?.identity.close()
    return channel
  }

  const metadata = async (): Promise<grpc.Metadata> => {
    const md = new grpc.Metadata()
    if (options.token !== undefined) {
      const token = (await read(options.token)).trim()
      if (token === '') throw invalidArgument('token', '', 'a non-empty bearer token (the token file is empty)')
      md.set('authorization', `Bearer ${token}`)
    }
    md.set('clusterid', options.clusterId ?? 'Kubernetes')
    for (const [name, value] of Object.entries(options.headers ?? {})) md.set(name.toLowerCase(), value)
    return md
  }

  const unary = <Req, Res>(client: grpc.Client, method: string, request: Req, md: grpc.Metadata, signal: AbortSignal | undefined, what: string): Promise<Res> =>
    new Promise((resolve, reject) => {
      throwIfAborted(signal, what)
      const call = (client as unknown as Record<string, (r: Req, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Res) => void) => grpc.ClientUnaryCall>)[method]!.call(
        client, request, md, { deadline: Date.now() + timeoutMs },
        (err, response) => {
          signal?.removeEventListener('abort', onAbort)
          if (err) reject(signal?.aborted ? abortError(signal, what) : refused(err, what))
          else resolve(response)
        },
      )
      const onAbort = (): void => call.cancel()
      signal?.addEventListener('abort', onAbort, { once: true })
    })

  /** Checks an answer and returns the SVID; updates the bundle when the CA's roots changed. */
  const accept = (id: SpiffeId, key: KeyObject, response: IstioCertificateResponse): X509Svid => {
    const elements = (response.cert_chain ?? []).filter((e) => typeof e === 'string' && e.trim() !== '')
    if (elements.length === 0) throw badResponse('malformed', 'the certificate chain is empty')
    let chainPem: string[]
    let rootsPem: string
    const separateRoots = response.root_cert?.ca_cert?.filter((r) => r.trim() !== '') ?? []
    if (separateRoots.length > 0) {
      chainPem = elements
      rootsPem = separateRoots.join('\n')
    } else {
      // ztunnel: a one-element chain has "no root certificate present".
      if (elements.length < 2) throw badResponse('no-root', 'the chain has no root certificate (it must be the last element)')
      chainPem = elements.slice(0, -1)
      rootsPem = elements[elements.length - 1]!
    }
    let roots: TrustBundle
    let chain: X509Certificate[]
    try {
      roots = TrustBundle.fromPem(trustDomain, rootsPem)
      chain = chainPem.flatMap((e) => pemBlocks(e)).map((pem) => new X509Certificate(pem))
      if (chain.length === 0) throw new Error('no certificate in the chain')
    } catch (err) {
      throw badResponse('malformed', `unreadable certificates: ${(err as Error).message}`, err)
    }
    const leaf = chain[0]!
    // ztunnel's SanError: the leaf must name exactly the identity asked for.
    const sans = (leaf.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4))
    if (sans.length !== 1 || sans[0] !== id.toString()) throw badResponse('san-mismatch', `the leaf names ${JSON.stringify(sans)}, ${id.toString()} was asked for`)
    if (!leaf.checkPrivateKey(key)) throw badResponse('key-mismatch', 'the leaf does not certify the key of the CSR')
    try {
      verifyX509Svid(chain, roots)
    } catch (err) {
      throw badResponse('untrusted', `the chain does not verify to the roots given with it: ${(err as Error).message}`, err)
    }
    const held = bundles.get(trustDomain)
    const same = (a: X509Certificate, b: X509Certificate): boolean => a.raw.equals(b.raw)
    if (held !== undefined && held.x509Authorities.length > 0) {
      if (!roots.x509Authorities.some((r) => held.x509Authorities.some((h) => same(r, h)))) {
        throw badResponse('untrusted', 'the CA\'s roots share none with the trust bundle held: a root rotation must overlap')
      }
      const changed = roots.x509Authorities.length !== held.x509Authorities.length || roots.x509Authorities.some((r) => !held.x509Authorities.some((h) => same(r, h)))
      if (changed) {
        log.info({ roots: roots.x509Authorities.length }, 'the CA\'s roots changed; trust bundle updated')
        bundles.set(TrustBundle.create({ trustDomain, x509Authorities: roots.x509Authorities, jwtAuthorities: held.jwtAuthorities }))
      }
    }
    const parsedLeaf = new X509Certificate(chainPem[0]!)
    return {
      id,
      certificateChainPem: chain.map((c) => c.toString()).join(''),
      privateKeyPem: key.export({ type: 'pkcs8', format: 'pem' }) as string,
      notBefore: new Date(parsedLeaf.validFrom),
      notAfter: new Date(parsedLeaf.validTo),
    }
  }

  // WatchBundles: follows the CA's bundles, reconnecting with backoff, while the source is open.
  let watch: grpc.ClientReadableStream<WatchBundlesResponse> | undefined
  let watchTimer: NodeJS.Timeout | undefined
  let watchFailures = 0
  const applyBundles = (message: WatchBundlesResponse): void => {
    for (const [name, json] of Object.entries(message.bundles ?? {})) {
      try {
        const bundle = TrustBundle.parse(name, json)
        const held = bundles.get(name)
        if (held === undefined || held.toJson() !== bundle.toJson()) bundles.set(bundle)
      } catch (err) {
        log.warn({ err, trustDomain: name }, 'ignoring an invalid bundle from the CA')
      }
    }
    for (const held of bundles.all()) if (!(held.trustDomain.name in (message.bundles ?? {}))) bundles.delete(held.trustDomain)
  }
  const startWatch = async (): Promise<void> => {
    if (lifetime.signal.aborted) return
    try {
      const { identity } = await clients()
      const stream = (identity as unknown as { WatchBundles(r: object, m: grpc.Metadata): grpc.ClientReadableStream<WatchBundlesResponse> }).WatchBundles({}, await metadata())
      watch = stream
      stream.on('data', (message: WatchBundlesResponse) => {
        watchFailures = 0
        applyBundles(message)
      })
      stream.on('error', (err: grpc.ServiceError) => {
        if (!lifetime.signal.aborted && err.code !== grpc.status.CANCELLED) log.warn({ err: refused(err, 'WatchBundles') }, 'bundle watch ended')
      })
      stream.on('close', () => retryWatch())
    } catch (err) {
      log.warn({ err }, 'could not watch the CA\'s bundles')
      retryWatch()
    }
  }
  const retryWatch = (): void => {
    if (lifetime.signal.aborted || watchTimer !== undefined) return
    watchFailures += 1
    // go-spiffe's and ztunnel's shape: quick first retry, doubling, capped.
    const delay = Math.min(30_000, 500 * 2 ** Math.min(watchFailures - 1, 6))
    watchTimer = setTimeout(() => {
      watchTimer = undefined
      void startWatch()
    }, delay)
    watchTimer.unref()
  }
  if (options.watchBundles === true) void startWatch()

  return {
    bundles,
    async fetch(id: SpiffeId, fetchOptions: IdentityFetchOptions): Promise<X509Svid> {
      throwIfAborted(fetchOptions.signal, 'CreateCertificate')
      const key = await generateP256()
      const request: IstioCertificateRequest = {
        csr: createCsr({ id, privateKey: key }),
        validity_duration: Math.floor(fetchOptions.ttlSeconds),
        metadata: impersonate ? stringStruct({ [IMPERSONATED_IDENTITY]: id.toString() }) : null,
      }
      const { certificates } = await clients()
      const response = await unary<IstioCertificateRequest, IstioCertificateResponse>(certificates, 'CreateCertificate', request, await metadata(), fetchOptions.signal, `a certificate for ${id.toString()}`)
      return accept(id, key, response)
    },
    async fetchJwtSvid(id: SpiffeId, fetchOptions: JwtSvidFetchOptions): Promise<JwtSvid> {
      // The token is checked with the trust domain's JWT keys, which come with the bundles.
      if (options.watchBundles !== true) throw invalidArgument('watchBundles', options.watchBundles, 'true to fetch JWT-SVIDs (their keys come with the CA\'s bundles)')
      const { identity } = await clients()
      const request: MintJwtSvidRequest = {
        audience: [...fetchOptions.audience],
        validity_duration: 0,
        metadata: impersonate ? stringStruct({ [IMPERSONATED_IDENTITY]: id.toString() }) : null,
      }
      const response = await unary<MintJwtSvidRequest, MintJwtSvidResponse>(identity, 'MintJWTSVID', request, await metadata(), fetchOptions.signal, `a JWT-SVID for ${id.toString()}`)
      let verified
      try {
        verified = verifyJwtSvid(response.token, bundles, { audience: fetchOptions.audience[0]! })
      } catch (err) {
        throw badResponse('untrusted', `the JWT-SVID does not verify with the trust bundle: ${(err as Error).message}`, err)
      }
      if (!verified.id.equals(id)) throw badResponse('san-mismatch', `the JWT-SVID is for ${verified.id.toString()}, ${id.toString()} was asked for`)
      const iat = verified.claims.iat
      return { id, token: response.token, audience: [...fetchOptions.audience], expiresAt: verified.expiresAt, issuedAt: new Date(typeof iat === 'number' ? iat * 1000 : Date.now()) }
    },
    async close(): Promise<void> {
      lifetime.abort()
      clearTimeout(watchTimer)
      watch?.cancel()
      channel?.certificates.close()
      channel?.identity.close()
      channel = undefined
    },
  }
}

