import * as grpc from '@grpc/grpc-js'
import { adsServiceDefinition, messageType } from '../../src/protos'
import type { DeltaDiscoveryRequest } from '../../src/xds-types'

export const ADDRESS = 'type.googleapis.com/istio.workload.Address'
export const AUTHORIZATION = 'type.googleapis.com/istio.security.Authorization'

/** A resource to push: a Workload or a Service (type Address) or an Authorization, as protobufjs objects. */
export interface PushResource {
  name: string
  version?: string
  workload?: Record<string, unknown>
  service?: Record<string, unknown>
  authorization?: Record<string, unknown>
  /** Raw bytes instead of an encoded message (hostile input). */
  raw?: Buffer
  /** No `resource` at all. */
  empty?: boolean
}

/** A request as the fake decodes it (proto-loader's object form). */
export type ReceivedRequest = DeltaDiscoveryRequest & { node: { id: string; metadata: { fields: Record<string, { stringValue?: string }> } } | null }

/** One DeltaAggregatedResources stream, seen from the server. */
export interface FakeStream {
  readonly metadata: grpc.Metadata
  /** The next request the client sent (resolves in order). */
  next(): Promise<ReceivedRequest>
  /** Sends a response; returns its nonce. */
  push(typeUrl: string, resources: readonly PushResource[], removed?: readonly string[]): string
  /** Ends the stream with a status. */
  end(code: grpc.status, details: string): void
  readonly closed: Promise<void>
}

const addressType = messageType('istio.workload.Address')
const authorizationType = messageType('istio.security.Authorization')

export function encodeResource(r: PushResource, typeUrl: string): Record<string, unknown> {
  if (r.empty === true) return { name: r.name, version: r.version ?? '' }
  let value: Uint8Array
  if (r.raw !== undefined) value = r.raw
  else if (r.authorization !== undefined) value = authorizationType.encode(authorizationType.fromObject(r.authorization)).finish()
  else value = addressType.encode(addressType.fromObject(r.workload !== undefined ? { workload: r.workload } : { service: r.service })).finish()
  return { name: r.name, version: r.version ?? '', resource: { typeUrl, value: Buffer.from(value) } }
}

/** A fake istiod: grpc-js serving only delta ADS, over TLS when given a key and certificate. */
export async function startFakeIstiod(tls?: { key: string; cert: string }): Promise<{
  port: number
  streams: () => Promise<FakeStream>
  close: () => Promise<void>
}> {
  const server = new grpc.Server()
  const waiting: Array<(s: FakeStream) => void> = []
  const ready: FakeStream[] = []
  let nonce = 0
  server.addService(adsServiceDefinition(), {
    StreamAggregatedResources: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
      call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: 'only delta xDS' })
    },
    DeltaAggregatedResources: (call: grpc.ServerDuplexStream<ReceivedRequest, unknown>) => {
      const queue: ReceivedRequest[] = []
      const readers: Array<(r: ReceivedRequest) => void> = []
      call.on('data', (req: ReceivedRequest) => {
        const reader = readers.shift()
        if (reader !== undefined) reader(req)
        else queue.push(req)
      })
      call.on('error', () => undefined)
      const closed = new Promise<void>((resolve) => {
        call.on('close', () => resolve())
        call.on('cancelled', () => resolve())
        call.on('finish', () => resolve())
      })
      const stream: FakeStream = {
        metadata: call.metadata,
        next: () => new Promise((resolve) => {
          const queued = queue.shift()
          if (queued !== undefined) resolve(queued)
          else readers.push(resolve)
        }),
        push(typeUrl, resources, removed = []) {
          const n = `n${++nonce}`
          call.write({ typeUrl, nonce: n, resources: resources.map((r) => encodeResource(r, typeUrl)), removedResources: [...removed], systemVersionInfo: '' })
          return n
        },
        end(code, details) {
          call.emit('error', { code, details })
        },
        closed,
      }
      const waiter = waiting.shift()
      if (waiter !== undefined) waiter(stream)
      else ready.push(stream)
    },
  })
  const credentials = tls === undefined
    ? grpc.ServerCredentials.createInsecure()
    : grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(tls.key), cert_chain: Buffer.from(tls.cert) }], false)
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', credentials, (err, p) => (err ? reject(err) : resolve(p))))
  return {
    port,
    streams: () => new Promise((resolve) => {
      const s = ready.shift()
      if (s !== undefined) resolve(s)
      else waiting.push(resolve)
    }),
    close: async () => server.forceShutdown(),
  }
}
