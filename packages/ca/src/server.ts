import { X509Certificate } from 'node:crypto'
import { createServer as createTlsServer, type TLSSocket } from 'node:tls'
import * as grpc from '@grpc/grpc-js'
import { invalidArgument, isAmbientError, silentLogger, type Closable, type Logger } from '@ambientkit/core'
import {
  IdentityErrorCode, SpiffeId, attachTlsServer, peerSpiffeId, tlsServerOptions, type CertificateAuthority, type IdentityManager,
  type JwtSvidIssuer, type TrustBundleSet,
} from '@ambientkit/identity'
import type { AuditEntry } from './audit'
import type { AuthenticatedCaller, Authenticator, CallCredentials } from './authenticate'
import { CaErrorCode, Refusal } from './errors'
import type { PodDirectory } from './kubernetes'
import { boundAddress, closeAt, listenAt, type ListenAddress } from './listen'
import { pemBlocks } from './pem'
import {
  IMPERSONATED_IDENTITY, caServices, structString, type IstioCertificateRequest, type IstioCertificateResponse, type MintJwtSvidRequest,
  type MintJwtSvidResponse, type Struct, type WatchBundlesResponse,
} from './proto'

/** Where the CA service listens: TCP, or a unix socket (TLS either way). */
export type CaServerListen = ListenAddress

/** Bounds on what callers can make the server hold. */
export interface CaServerLimits {
  /** Open connections at once. Default 1024. */
  readonly maxConnections?: number
  /** A TLS handshake not done by then is dropped. Default 10 000 ms. */
  readonly handshakeTimeoutMs?: number
  /** Concurrent calls on one connection. Default 100. */
  readonly maxConcurrentStreams?: number
  /** Largest request message. Default 65 536 bytes (a CSR is about 500). */
  readonly maxMessageBytes?: number
  /** `WatchBundles` streams at once. Default 1024. */
  readonly maxWatchers?: number
}

/** Options of {@link createCaServer}. */
export interface CaServerOptions {
  /** The CA that signs, or a function returning the one signing now (a CA rotation switches it). */
  readonly ca: CertificateAuthority | (() => CertificateAuthority)
  /**
   * The bundles the CA vouches for: the X.509 authorities of its own trust
   * domain go last in every `cert_chain` (several during a root rotation),
   * and `WatchBundles` streams the set. Default: the CA's own bundle, fixed.
   */
  readonly bundles?: TrustBundleSet
  /** Signs JWT-SVIDs for `MintJWTSVID`; without it that method answers UNIMPLEMENTED. */
  readonly jwtIssuer?: JwtSvidIssuer
  /** Tried in order; the first that vouches for the caller wins. */
  readonly authenticators: readonly Authenticator[]
  /**
   * Service accounts (`namespace/name`) of node agents allowed to ask for
   * other identities (Istio's `CA_TRUSTED_NODE_ACCOUNTS`), each only for a
   * pod scheduled on the caller's own node. Default none: no impersonation.
   */
  readonly trustedNodeAccounts?: readonly string[]
  /** Where pods are looked up for impersonation. Required with `trustedNodeAccounts`. */
  readonly pods?: PodDirectory
  /** Lifetime of an X.509-SVID when the request asks for none (`validity_duration` ≤ 0). Default 86 400 (Istio's). */
  readonly defaultTtlSeconds?: number
  /** Longest X.509-SVID lifetime; longer requests are clamped to it. Default 86 400. */
  readonly maxTtlSeconds?: number
  /** Longest JWT-SVID lifetime; default for requests that ask for none is 300. Default 3600. */
  readonly maxJwtTtlSeconds?: number
  /** The server's own certificate: this manager's current SVID of `id` (with DNS names if clients verify a host name), rotated without restart. */
  readonly tls: { readonly manager: IdentityManager; readonly id: SpiffeId | string }
  readonly listen: CaServerListen
  /** Receives one entry per issuance and refusal. Default: the logger, at info level. */
  readonly audit?: (entry: AuditEntry) => void
  readonly limits?: CaServerLimits
  /** Default: silent. */
  readonly logger?: Logger
}

/** A running CA service. */
export interface CaServer extends Closable {
  /** Where it listens: `{ host, port }` (the port chosen when 0 was asked) or `{ path }`. */
  address(): CaServerListen
}

interface Connection {
  peer: string
  peerId: SpiffeId | undefined
}

const UNAUTHENTICATED = 'request authenticate failure'
const IMPERSONATION_REFUSED = 'request impersonation authentication failure'

function statusName(code: grpc.status): string {
  return grpc.status[code] ?? String(code)
}

function checkSeconds(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback
  if (!Number.isInteger(v) || v < 1) throw invalidArgument(name, value, 'an integer number of seconds >= 1')
  return v
}

/**
 * Starts the mesh's CA as a gRPC service speaking Istio's certificate API
 * (`istio.v1.auth.IstioCertificateService/CreateCertificate`), plus
 * `ambientkit.identity.v1.MeshIdentityService` (JWT-SVIDs and bundle
 * updates), over TLS with the server's own SVID.
 *
 * Every call is authenticated by the first of `authenticators` that vouches
 * for it, then authorized by Istio's impersonation rule: a caller gets an
 * SVID for its own identity; a node agent whose service account is in
 * `trustedNodeAccounts` may ask for another (metadata `ImpersonatedIdentity`)
 * only if a pod with that namespace and service account, not Failed, is
 * scheduled on the caller's node. The certificate names the authorized
 * identity whatever the CSR says; the CSR's signature and key are checked;
 * the lifetime is clamped to `maxTtlSeconds`. Refusals get Istio's status
 * codes and fixed texts; the reason goes to the audit log only.
 *
 * @example
 * ```ts
 * import { createCertificateAuthority, createIdentityManager, createLocalCaSource } from '@ambientkit/identity'
 * import {
 *   auditToJsonLines,
 *   createCaServer,
 *   createKubernetesPodDirectory,
 *   createKubernetesTokenAuthenticator,
 *   createSvidAuthenticator,
 *   kubernetesApiInCluster,
 * } from '@ambientkit/ca'
 *
 * const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
 * const own = createIdentityManager({ source: createLocalCaSource(ca) })
 * const server = await createCaServer({
 *   ca,
 *   tls: { manager: own, id: 'spiffe://cluster.local/ns/ambientkit-system/sa/control-plane' },
 *   listen: { host: '0.0.0.0', port: 15012 },
 *   authenticators: [createKubernetesTokenAuthenticator({ api: kubernetesApiInCluster(), trustDomain: 'cluster.local' }), createSvidAuthenticator()],
 *   trustedNodeAccounts: ['ambientkit-system/ambientkit-node'],
 *   pods: createKubernetesPodDirectory({ api: kubernetesApiInCluster() }),
 *   audit: auditToJsonLines((line) => process.stdout.write(line)),
 * })
 * ```
 */
export async function createCaServer(options: CaServerOptions): Promise<CaServer> {
  const currentCa = typeof options.ca === 'function' ? options.ca : () => options.ca as CertificateAuthority
  const trustDomain = currentCa().trustDomain
  const bundles = options.bundles
  const defaultTtl = checkSeconds('defaultTtlSeconds', options.defaultTtlSeconds, 86_400)
  const maxTtl = checkSeconds('maxTtlSeconds', options.maxTtlSeconds, 86_400)
  const maxJwtTtl = checkSeconds('maxJwtTtlSeconds', options.maxJwtTtlSeconds, 3600)
  if (!Array.isArray(options.authenticators) || options.authenticators.length === 0) throw invalidArgument('authenticators', options.authenticators, 'at least one Authenticator')
  const trustedNodeAccounts = new Set(options.trustedNodeAccounts ?? [])
  for (const account of trustedNodeAccounts) if (!/^[^/]+\/[^/]+$/.test(account)) throw invalidArgument('trustedNodeAccounts', account, '"namespace/serviceaccount" entries')
  if (trustedNodeAccounts.size > 0 && options.pods === undefined) throw invalidArgument('pods', undefined, 'a PodDirectory when trustedNodeAccounts is set')
  const limits = {
    maxConnections: options.limits?.maxConnections ?? 1024,
    handshakeTimeoutMs: options.limits?.handshakeTimeoutMs ?? 10_000,
    maxConcurrentStreams: options.limits?.maxConcurrentStreams ?? 100,
    maxMessageBytes: options.limits?.maxMessageBytes ?? 64 * 1024,
    maxWatchers: options.limits?.maxWatchers ?? 1024,
  }
  const log = (options.logger ?? silentLogger).child({ component: 'ca-server' })
  const audit = options.audit ?? ((entry: AuditEntry) => log.info({ audit: entry }, `CA ${entry.event}`))
  const writeAudit = (entry: Omit<AuditEntry, 'time'>): void => {
    try {
      audit({ time: new Date().toISOString(), ...entry })
    } catch (err) {
      log.error({ err }, 'the audit sink threw')
    }
  }

  const connections = new Map<string, Connection>()
  let nextConnection = 0
  const grpcServer = new grpc.Server({
    'grpc.max_receive_message_length': limits.maxMessageBytes,
    'grpc.max_concurrent_streams': limits.maxConcurrentStreams,
    // Pings find dead peers of long WatchBundles streams.
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
  })

  const credentialsOf = (call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): CallCredentials => {
    const connection = connections.get(call.getPeer())
    return {
      header: (name) => {
        const value = call.metadata.get(name)[0]
        return typeof value === 'string' ? value : undefined
      },
      peerId: connection?.peerId,
      peer: connection?.peer ?? 'unknown',
    }
  }

  const authenticate = async (credentials: CallCredentials, signal: AbortSignal): Promise<AuthenticatedCaller> => {
    const failures: string[] = []
    let unavailable = false
    for (const authenticator of options.authenticators) {
      try {
        const caller = await authenticator.authenticate(credentials, { signal })
        if (caller !== undefined) return caller
      } catch (err) {
        if (isAmbientError(err, CaErrorCode.KubernetesApi)) unavailable = true
        failures.push(`${authenticator.name}: ${(err as Error).message}`)
      }
    }
    if (unavailable) throw new Refusal(grpc.status.UNAVAILABLE, 'authentication backend unavailable', failures.join('; '))
    throw new Refusal(grpc.status.UNAUTHENTICATED, UNAUTHENTICATED, failures.length > 0 ? failures.join('; ') : 'no credential any authenticator accepts')
  }

  /** The identity the caller may have: its own, or an impersonated one Istio's rule allows. */
  const authorize = async (caller: AuthenticatedCaller, metadata: Struct | null, signal: AbortSignal): Promise<SpiffeId> => {
    const asked = structString(metadata, IMPERSONATED_IDENTITY)
    if (asked === null) throw new Refusal(grpc.status.INVALID_ARGUMENT, 'invalid request metadata', `${IMPERSONATED_IDENTITY} is not a string`)
    const requested = asked === undefined || asked === '' ? caller.identity : SpiffeId.tryParse(asked)
    if (requested === undefined) throw new Refusal(grpc.status.UNAUTHENTICATED, IMPERSONATION_REFUSED, `${IMPERSONATED_IDENTITY} ${JSON.stringify(asked)} is not a SPIFFE ID`, asked)
    const text = requested.toString()
    const refuse = (reason: string, status = grpc.status.UNAUTHENTICATED, message = IMPERSONATION_REFUSED): Refusal => new Refusal(status, message, reason, text)
    if (!requested.memberOf(trustDomain)) {
      throw requested.equals(caller.identity)
        ? refuse(`${text} is not of trust domain ${trustDomain.name}`, grpc.status.PERMISSION_DENIED, 'identity not issued by this CA')
        : refuse(`${text} is not of trust domain ${trustDomain.name}`)
    }
    if (requested.equals(caller.identity)) return requested
    // Istio's impersonation rule (security/pkg/server/ca/node_auth.go), every part required.
    const account = caller.identity.toServiceAccount()
    if (account === undefined || !caller.identity.memberOf(trustDomain) || !trustedNodeAccounts.has(`${account.namespace}/${account.serviceAccount}`)) {
      throw refuse(`${caller.identity.toString()} is not a trusted node account`)
    }
    if (caller.node === undefined) throw refuse(`the caller's node is unknown (its ${caller.method} credential is not bound to a pod on a node)`)
    const target = requested.toServiceAccount()
    if (target === undefined) throw refuse(`${text} is not of the form /ns/<namespace>/sa/<serviceaccount>`)
    let scheduled: boolean
    try {
      scheduled = await options.pods!.hasPod({ ...target, node: caller.node }, { signal })
    } catch (err) {
      throw refuse(`pod lookup failed: ${(err as Error).message}`, grpc.status.UNAVAILABLE, 'pod lookup unavailable')
    }
    if (!scheduled) throw refuse(`no pod of ${target.namespace}/${target.serviceAccount}, not Failed, is scheduled on node ${caller.node}`)
    return requested
  }

  const callerEntry = (caller: AuthenticatedCaller | undefined): AuditEntry['caller'] =>
    caller === undefined ? undefined : { ...caller.details, identity: caller.identity.toString(), method: caller.method, ...(caller.node ? { node: caller.node } : {}) }

  /** Runs one unary call: authenticate, authorize, act; every outcome audited once. */
  const unary = <Req, Res>(
    method: string,
    act: (request: Req, caller: AuthenticatedCaller, signal: AbortSignal) => Promise<{ response: Res; audit: Partial<AuditEntry> }>,
  ) => (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>): void => {
    const credentials = credentialsOf(call)
    const controller = new AbortController()
    call.on('cancelled', () => controller.abort(new Error('the caller cancelled')))
    let caller: AuthenticatedCaller | undefined
    const run = async (): Promise<void> => {
      caller = await authenticate(credentials, controller.signal)
      const { response, audit: details } = await act(call.request, caller, controller.signal)
      writeAudit({ event: 'issued', method, peer: credentials.peer, caller: callerEntry(caller), ...details })
      callback(null, response)
    }
    run().catch((err: unknown) => {
      const refusal = err instanceof Refusal ? err : new Refusal(grpc.status.INTERNAL, 'the CA failed', (err as Error)?.message ?? String(err))
      const requested = refusal.requested
      if (refusal.status === grpc.status.INTERNAL) log.error({ err, method }, 'CA call failed')
      writeAudit({
        event: 'refused',
        method,
        peer: credentials.peer,
        caller: callerEntry(caller),
        ...(requested ? { requested, impersonation: caller !== undefined && requested !== caller.identity.toString() } : {}),
        status: statusName(refusal.status),
        reason: refusal.reason,
      })
      callback({ code: refusal.status, details: refusal.publicMessage })
    })
  }

  const ttlFor = (asked: number, fallback: number, max: number): { ttl: number; clamped: boolean } => {
    if (!Number.isFinite(asked) || asked <= 0) return { ttl: Math.min(fallback, max), clamped: false }
    return asked > max ? { ttl: max, clamped: true } : { ttl: Math.floor(asked), clamped: false }
  }

  const createCertificate = unary<IstioCertificateRequest, IstioCertificateResponse>('CreateCertificate', async (request, caller, signal) => {
    const id = await authorize(caller, request.metadata, signal)
    const requested = id.toString()
    if (typeof request.csr !== 'string' || request.csr === '') throw new Refusal(grpc.status.INVALID_ARGUMENT, 'CSR signing error', 'no CSR', requested)
    const { ttl, clamped } = ttlFor(request.validity_duration, defaultTtl, maxTtl)
    const ca = currentCa()
    let signed
    try {
      signed = await ca.signCsr(request.csr, { id, ttlSeconds: ttl, csrSans: 'ignore', signal })
    } catch (err) {
      const bad = isAmbientError(err, IdentityErrorCode.CsrRejected)
      throw new Refusal(bad ? grpc.status.INVALID_ARGUMENT : grpc.status.INTERNAL, bad ? 'CSR signing error' : 'certificate signing failed', (err as Error).message, requested)
    }
    const roots = bundles?.get(trustDomain)?.x509AuthoritiesPem() || ca.bundle.x509AuthoritiesPem()
    const leaf = pemBlocks(signed.certificateChainPem)
    return {
      // Istio's form: leaf, intermediates, then every root in one last element.
      response: { cert_chain: [...leaf, roots] },
      audit: {
        requested,
        impersonation: !id.equals(caller.identity),
        serial: new X509Certificate(leaf[0]!).serialNumber,
        ttlSeconds: Math.round((signed.notAfter.getTime() - Date.now()) / 1000),
        notAfter: signed.notAfter.toISOString(),
        ...(clamped ? { requestedTtlSeconds: request.validity_duration } : {}),
      },
    }
  })

  const mintJwtSvid = unary<MintJwtSvidRequest, MintJwtSvidResponse>('MintJWTSVID', async (request, caller, signal) => {
    if (options.jwtIssuer === undefined) throw new Refusal(grpc.status.UNIMPLEMENTED, 'this CA does not issue JWT-SVIDs', 'no jwtIssuer configured')
    const id = await authorize(caller, request.metadata, signal)
    const requested = id.toString()
    const audience = request.audience ?? []
    if (audience.length === 0 || audience.some((a) => typeof a !== 'string' || a === '' || a.length > 1024) || audience.length > 16) {
      throw new Refusal(grpc.status.INVALID_ARGUMENT, 'audience required', `audience ${JSON.stringify(audience).slice(0, 200)} is not 1 to 16 non-empty strings of at most 1024 characters`, requested)
    }
    const { ttl } = ttlFor(request.validity_duration, 300, maxJwtTtl)
    const svid = options.jwtIssuer.sign(id, { audience, ttlSeconds: ttl })
    return { response: { token: svid.token }, audit: { requested, impersonation: !id.equals(caller.identity), audience, ttlSeconds: ttl, notAfter: svid.expiresAt.toISOString() } }
  })

  const watchers = new Set<grpc.ServerWritableStream<unknown, WatchBundlesResponse>>()
  const snapshot = (): WatchBundlesResponse => {
    const all = bundles?.all() ?? [currentCa().bundle]
    return { bundles: Object.fromEntries(all.map((b) => [b.trustDomain.name, b.toJson()])) }
  }
  const offBundles = bundles?.subscribe(() => {
    const message = snapshot()
    for (const watcher of watchers) watcher.write(message)
  })
  const watchBundles = (call: grpc.ServerWritableStream<unknown, WatchBundlesResponse>): void => {
    const credentials = credentialsOf(call)
    const controller = new AbortController()
    call.on('cancelled', () => controller.abort())
    call.on('error', () => watchers.delete(call))
    call.on('close', () => watchers.delete(call))
    authenticate(credentials, controller.signal).then(
      (caller) => {
        if (controller.signal.aborted) return
        if (watchers.size >= limits.maxWatchers) {
          writeAudit({ event: 'refused', method: 'WatchBundles', peer: credentials.peer, caller: callerEntry(caller), status: 'RESOURCE_EXHAUSTED', reason: `${limits.maxWatchers} watchers already` })
          call.emit('error', { name: 'Error', message: 'too many watchers', code: grpc.status.RESOURCE_EXHAUSTED, details: 'too many watchers' })
          return
        }
        watchers.add(call)
        call.write(snapshot())
      },
      (err: unknown) => {
        const refusal = err instanceof Refusal ? err : new Refusal(grpc.status.INTERNAL, 'the CA failed', String(err))
        writeAudit({ event: 'refused', method: 'WatchBundles', peer: credentials.peer, status: statusName(refusal.status), reason: refusal.reason })
        // grpc-js sends the status of an 'error' event; destroy() would send none.
        call.emit('error', { name: 'Error', message: refusal.publicMessage, code: refusal.status, details: refusal.publicMessage })
      },
    )
  }

  const services = caServices()
  grpcServer.addService(services.IstioCertificateService.service, { CreateCertificate: createCertificate })
  grpcServer.addService(services.MeshIdentityService.service, { MintJWTSVID: mintJwtSvid, WatchBundles: watchBundles })
  const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure())

  const tlsOptions = await tlsServerOptions({ manager: options.tls.manager, id: options.tls.id, alpnProtocols: ['h2'], clientCertificate: 'optional' })
  const tlsServer = createTlsServer({ ...tlsOptions, handshakeTimeout: limits.handshakeTimeoutMs })
  tlsServer.maxConnections = limits.maxConnections
  const sockets = new Set<TLSSocket>()
  // Before attachTlsServer, so a client presenting a bad certificate never reaches gRPC.
  tlsServer.on('secureConnection', (socket: TLSSocket) => {
    const key = `ca-connection-${(nextConnection += 1)}`
    let peerId: SpiffeId | undefined
    try {
      peerId = peerSpiffeId(socket)
    } catch {
      peerId = undefined
    }
    const peer = socket.remoteAddress === undefined ? 'unix' : `${socket.remoteAddress}:${socket.remotePort}`
    connections.set(key, { peer, peerId })
    sockets.add(socket)
    socket.once('close', () => {
      connections.delete(key)
      sockets.delete(socket)
    })
    // grpc-js names a call's peer by its socket's remoteAddress: this key finds the connection again.
    Object.defineProperty(socket, 'remoteAddress', { value: key, configurable: true })
    Object.defineProperty(socket, 'remotePort', { value: undefined, configurable: true })
    injector.injectConnection(socket)
  })
  const binding = attachTlsServer(tlsServer, tlsOptions)
  tlsServer.on('tlsClientError', (err: Error) => log.debug({ err }, 'TLS handshake with a CA client failed'))
  tlsServer.on('error', (err) => log.error({ err }, 'CA server error'))

  await listenAt(tlsServer, options.listen)
  log.info({ listen: tlsServer.address(), trustDomain: trustDomain.name }, 'CA service listening')

  let closing: Promise<void> | undefined
  return {
    address: () => boundAddress(tlsServer, options.listen),
    close() {
      closing ??= (async () => {
        offBundles?.()
        binding.close()
        const closed = closeAt(tlsServer, options.listen)
        for (const watcher of watchers) watcher.end()
        watchers.clear()
        injector.destroy()
        grpcServer.forceShutdown()
        for (const socket of sockets) socket.destroy()
        await closed
      })()
      return closing
    },
  }
}
