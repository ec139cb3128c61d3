import { X509Certificate, createPrivateKey } from 'node:crypto'
import { chmod, rename, rm, stat } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'
import * as grpc from '@grpc/grpc-js'
import { invalidArgument, silentLogger, type Closable, type Logger } from '@ambientkit/core'
import { pemCertificates, verifyJwtSvid, type IdentityManager, type SpiffeId, type TrustBundle, type X509Svid } from '@ambientkit/identity'
import { peerCredentials } from '@ambientkit/redirect'
import { readCallerProcess, type Attestor, type CallerProcess } from './attest'
import {
  SECURITY_HEADER, protoStruct, workloadApiService, type JwtBundlesResponse, type JwtSvidRequest, type JwtSvidResponse, type ValidateJwtSvidRequest,
  type X509BundlesResponse, type X509SvidResponse,
} from './proto'

/** Bounds on what callers can make the server hold. */
export interface WorkloadApiLimits {
  /** Open connections at once. Default 512. */
  readonly maxConnections?: number
  /** Open streams at once, all callers together. Default 2048. */
  readonly maxStreams?: number
  /** Largest request message. Default 16 384 bytes. */
  readonly maxMessageBytes?: number
}

/** Options of {@link createWorkloadApiServer}. */
export interface WorkloadApiServerOptions {
  /** Where the unix socket is created (a stale one is replaced). Workloads find it through `SPIFFE_ENDPOINT_SOCKET=unix://<path>`. */
  readonly socketPath: string
  /** Holds the SVIDs handed out (kept renewed while a stream is open), the bundles, and JWT-SVIDs. */
  readonly manager: IdentityManager
  /** Which identities a caller gets, from its process: see `createNetnsAttestor`. */
  readonly attest: Attestor
  /** Mode of the socket file. Default 0o777: anyone may connect; attestation decides what they get. */
  readonly socketMode?: number
  readonly limits?: WorkloadApiLimits
  /** Default: silent. */
  readonly logger?: Logger
}

/** A running Workload API server. */
export interface WorkloadApiServer extends Closable {
  readonly socketPath: string
  /** Attests every open stream again now and sends what changed: call it when pods were enrolled or removed. */
  refresh(): void
}

interface Stream {
  readonly call: grpc.ServerWritableStream<unknown, unknown>
  readonly caller: CallerProcess
  readonly build: (ids: readonly SpiffeId[]) => Promise<unknown>
  /** Identities retained in the manager for this stream. */
  retained: Map<string, () => void>
  /** Updates run one after another; a later one supersedes a queued one. */
  running: Promise<void>
  queued: boolean
}

const NO_IDENTITY = 'no identity issued'

/** PEM certificates → one buffer of their DER encodings, concatenated (the Workload API's form). */
function derOf(pem: string): Buffer {
  return Buffer.concat(pemCertificates(pem).map((b) => new X509Certificate(b).raw))
}

const bundleDer = (bundle: TrustBundle): Buffer => Buffer.concat(bundle.x509Authorities.map((c) => c.raw))

function jwtJwks(bundle: TrustBundle): Buffer {
  return Buffer.from(JSON.stringify({ keys: bundle.jwtAuthorities.map((a) => ({ ...a.jwk, use: 'jwt-svid', kid: a.keyId })) }))
}

function status(code: grpc.status, details: string): Partial<grpc.StatusObject> {
  return { code, details, metadata: new grpc.Metadata() }
}

/** Ends a server stream with a status: grpc-js sends the status of an 'error' event (destroy() would send none). */
function endWith(call: grpc.ServerWritableStream<unknown, unknown>, code: grpc.status, details: string): void {
  call.emit('error', Object.assign(new Error(details), status(code, details)))
}

/**
 * Serves the SPIFFE Workload API (SPIFFE_Workload_API.md, workloadapi.proto)
 * on a unix socket: FetchX509SVID and FetchX509Bundles (streams: the full
 * state at once, then again on every rotation or bundle change),
 * FetchJWTSVID, FetchJWTBundles (a stream) and ValidateJWTSVID. Every call
 * must carry `workload.spiffe.io: true` (else INVALID_ARGUMENT). The caller
 * is attested from the socket: its peer credentials (SO_PEERCRED), then its
 * process's network namespace and cgroup, then `attest` names its
 * identities; a caller with none gets PERMISSION_DENIED ("no identity
 * issued", which clients retry), and a stream whose caller loses its
 * identities ends the same way.
 *
 * @example
 * ```ts
 * import type { IdentityManager } from '@ambientkit/identity'
 * import { createNetnsAttestor, createWorkloadApiServer, type EnrolledPod } from '@ambientkit/workload-api'
 *
 * declare const identities: IdentityManager // holds the pods' SVIDs
 * declare const pods: EnrolledPod[] // the node's enrolled pods: netns path and identity, kept current
 * const server = await createWorkloadApiServer({
 *   socketPath: '/run/ambientkit/workload-api/socket',
 *   manager: identities,
 *   attest: createNetnsAttestor(() => pods),
 * })
 * // In a pod: SPIFFE_ENDPOINT_SOCKET=unix:///run/ambientkit/workload-api/socket
 * ```
 */
export async function createWorkloadApiServer(options: WorkloadApiServerOptions): Promise<WorkloadApiServer> {
  const { manager, attest } = options
  if (typeof options.socketPath !== 'string' || !options.socketPath.startsWith('/')) throw invalidArgument('socketPath', options.socketPath, 'an absolute path')
  if (typeof attest !== 'function') throw invalidArgument('attest', attest, 'an Attestor function')
  const limits = {
    maxConnections: options.limits?.maxConnections ?? 512,
    maxStreams: options.limits?.maxStreams ?? 2048,
    maxMessageBytes: options.limits?.maxMessageBytes ?? 16 * 1024,
  }
  const log = (options.logger ?? silentLogger).child({ component: 'workload-api' })
  const callers = new Map<string, Promise<CallerProcess>>()
  const streams = new Set<Stream>()
  let nextConnection = 0

  const callerOf = (call: { getPeer(): string }): Promise<CallerProcess | undefined> => callers.get(call.getPeer()) ?? Promise.resolve(undefined)
  const headerOk = (metadata: grpc.Metadata): boolean => metadata.get(SECURITY_HEADER).length === 1 && metadata.get(SECURITY_HEADER)[0] === 'true'

  const identitiesOf = async (caller: CallerProcess | undefined): Promise<readonly SpiffeId[]> => {
    if (caller === undefined) return []
    try {
      return await attest(caller)
    } catch (err) {
      log.warn({ err, pid: caller.pid }, 'attestation failed')
      return []
    }
  }

  const end = (stream: Stream, code: grpc.status, details: string): void => {
    streams.delete(stream)
    for (const release of stream.retained.values()) release()
    stream.retained.clear()
    endWith(stream.call, code, details)
  }

  /** Attests again and sends the stream's full state; ends it when the caller has no identity left. */
  const update = (stream: Stream): void => {
    if (stream.queued) return
    stream.queued = true
    stream.running = stream.running.then(async () => {
      stream.queued = false
      if (!streams.has(stream)) return
      const ids = await identitiesOf(stream.caller)
      if (ids.length === 0) return end(stream, grpc.status.PERMISSION_DENIED, NO_IDENTITY)
      const keep = new Set(ids.map(String))
      for (const [id, release] of stream.retained) if (!keep.has(id)) {
        release()
        stream.retained.delete(id)
      }
      for (const id of ids) if (!stream.retained.has(id.toString())) stream.retained.set(id.toString(), manager.retain(id))
      let message: unknown
      try {
        message = await stream.build(ids)
      } catch (err) {
        log.warn({ err }, 'could not build a Workload API update')
        return end(stream, grpc.status.UNAVAILABLE, 'identities unavailable')
      }
      if (streams.has(stream)) stream.call.write(message)
    })
  }

  const openStream = (build: Stream['build']) => (call: grpc.ServerWritableStream<unknown, unknown>): void => {
    if (!headerOk(call.metadata)) {
      return endWith(call, grpc.status.INVALID_ARGUMENT, 'security header missing from request')
    }
    void callerOf(call).then((caller) => {
      if (call.cancelled) return
      if (caller === undefined) return endWith(call, grpc.status.PERMISSION_DENIED, NO_IDENTITY)
      if (streams.size >= limits.maxStreams) return endWith(call, grpc.status.RESOURCE_EXHAUSTED, 'too many streams')
      const stream: Stream = { call, caller, build, retained: new Map(), running: Promise.resolve(), queued: false }
      streams.add(stream)
      const close = (): void => {
        if (!streams.delete(stream)) return
        for (const release of stream.retained.values()) release()
        stream.retained.clear()
      }
      call.on('cancelled', close)
      call.on('close', close)
      call.on('error', close)
      // The first message without delay (Workload API §5.2).
      update(stream)
    })
  }

  const x509Svids = async (ids: readonly SpiffeId[]): Promise<X509SvidResponse> => {
    const svids: X509Svid[] = await Promise.all(ids.map((id) => manager.get(id)))
    const own = new Set(ids.map((id) => id.trustDomain.name))
    const bundles = manager.bundles
    return {
      svids: svids.map((svid) => ({
        spiffe_id: svid.id.toString(),
        x509_svid: derOf(svid.certificateChainPem),
        x509_svid_key: createPrivateKey(svid.privateKeyPem).export({ type: 'pkcs8', format: 'der' }),
        bundle: bundleDer(bundles.get(svid.id.trustDomain)!),
        hint: '',
      })),
      crl: [],
      federated_bundles: Object.fromEntries(bundles.all().filter((b) => !own.has(b.trustDomain.name)).map((b) => [b.trustDomain.id().toString(), bundleDer(b)])),
    }
  }
  const x509Bundles = async (): Promise<X509BundlesResponse> => ({
    crl: [],
    bundles: Object.fromEntries(manager.bundles.all().map((b) => [b.trustDomain.id().toString(), bundleDer(b)])),
  })
  const jwtBundles = async (): Promise<JwtBundlesResponse> => ({
    bundles: Object.fromEntries(manager.bundles.all().map((b) => [b.trustDomain.id().toString(), jwtJwks(b)])),
  })

  const unary = <Req, Res>(act: (request: Req, ids: readonly SpiffeId[]) => Promise<Res>) => (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>): void => {
    if (!headerOk(call.metadata)) return callback(status(grpc.status.INVALID_ARGUMENT, 'security header missing from request'))
    void callerOf(call)
      .then(identitiesOf)
      .then(async (ids) => {
        if (ids.length === 0) return callback(status(grpc.status.PERMISSION_DENIED, NO_IDENTITY))
        callback(null, await act(call.request, ids))
      })
      .catch((err: unknown) => callback(err instanceof WorkloadApiRefusal ? status(err.code, err.message) : status(grpc.status.UNAVAILABLE, 'identities unavailable')))
  }

  const fetchJwtSvid = unary<JwtSvidRequest, JwtSvidResponse>(async (request, ids) => {
    const audience = (request.audience ?? []).filter((a) => typeof a === 'string')
    if (audience.length === 0 || audience.some((a) => a === '' || a.length > 1024) || audience.length > 16) {
      throw new WorkloadApiRefusal(grpc.status.INVALID_ARGUMENT, 'audience must be specified')
    }
    let chosen = ids
    if (request.spiffe_id) {
      chosen = ids.filter((id) => id.toString() === request.spiffe_id)
      if (chosen.length === 0) throw new WorkloadApiRefusal(grpc.status.PERMISSION_DENIED, `no identity issued for ${request.spiffe_id}`)
    }
    const svids = await Promise.all(chosen.map((id) => manager.fetchJwtSvid(id, audience)))
    return { svids: svids.map((s) => ({ spiffe_id: s.id.toString(), svid: s.token, hint: '' })) }
  })

  const validateJwtSvid = unary<ValidateJwtSvidRequest, unknown>(async (request) => {
    if (!request.audience) throw new WorkloadApiRefusal(grpc.status.INVALID_ARGUMENT, 'audience must be specified')
    if (!request.svid) throw new WorkloadApiRefusal(grpc.status.INVALID_ARGUMENT, 'svid must be specified')
    try {
      const verified = verifyJwtSvid(request.svid, manager.bundles, { audience: request.audience })
      return { spiffe_id: verified.id.toString(), claims: protoStruct(verified.claims) }
    } catch (err) {
      throw new WorkloadApiRefusal(grpc.status.INVALID_ARGUMENT, (err as Error).message)
    }
  })

  const grpcServer = new grpc.Server({ 'grpc.max_receive_message_length': limits.maxMessageBytes })
  grpcServer.addService(workloadApiService().service, {
    FetchX509SVID: openStream(x509Svids),
    FetchX509Bundles: openStream(x509Bundles),
    FetchJWTBundles: openStream(jwtBundles),
    FetchJWTSVID: fetchJwtSvid,
    ValidateJWTSVID: validateJwtSvid,
  })
  const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure())
  const sockets = new Set<Socket>()
  const server: Server = createServer((socket) => {
    const key = `workload-api-connection-${(nextConnection += 1)}`
    let credentials
    try {
      // Read at once: the kernel recorded them at connect(2); the descriptor is ours only while open.
      credentials = peerCredentials(socket)
    } catch (err) {
      log.debug({ err }, 'no peer credentials; dropping the connection')
      socket.destroy()
      return
    }
    callers.set(key, readCallerProcess(credentials))
    sockets.add(socket)
    socket.once('close', () => {
      callers.delete(key)
      sockets.delete(socket)
    })
    socket.on('error', (err) => log.debug({ err }, 'Workload API connection error'))
    // grpc-js names a call's peer by its socket's remoteAddress: this key finds the caller again.
    Object.defineProperty(socket, 'remoteAddress', { value: key, configurable: true })
    injector.injectConnection(socket)
  })
  server.maxConnections = limits.maxConnections
  server.on('error', (err) => log.error({ err }, 'Workload API server error'))

  const refresh = (): void => {
    for (const stream of streams) update(stream)
  }
  const offRotated = manager.subscribe((event) => {
    if (event.type !== 'rotated') return
    for (const stream of streams) if (stream.retained.has(event.id.toString())) update(stream)
  })
  const offBundles = manager.bundles.subscribe(refresh)

  // Listen on a path of our own, then rename it over the socket's: a server
  // already there (the agent this process upgrades) serves until then, and
  // no client ever finds the path missing.
  const staging = `${options.socketPath}.${process.pid}.new`
  await rm(staging, { force: true })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(staging, () => {
      server.off('error', reject)
      resolve()
    })
  })
  await chmod(staging, options.socketMode ?? 0o777)
  await rename(staging, options.socketPath)
  const { ino } = await stat(options.socketPath)
  log.info({ socket: options.socketPath }, 'Workload API listening')

  let closing: Promise<void> | undefined
  return {
    socketPath: options.socketPath,
    refresh,
    close() {
      closing ??= (async () => {
        offRotated()
        offBundles()
        const closed = new Promise<void>((resolve) => server.close(() => resolve()))
        for (const stream of [...streams]) end(stream, grpc.status.UNAVAILABLE, 'the Workload API is shutting down')
        injector.destroy()
        grpcServer.forceShutdown()
        for (const socket of sockets) socket.destroy()
        await closed
        // Only our own socket: after an upgrade the path is the new process's.
        if ((await stat(options.socketPath).catch(() => undefined))?.ino === ino) await rm(options.socketPath, { force: true })
      })()
      return closing
    },
  }
}

class WorkloadApiRefusal extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message)
  }
}
