import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { loadSync, type Options, type PackageDefinition } from '@grpc/proto-loader'
import protobuf from 'protobufjs'

// The same relative path works from src/ (tests run the sources) and from
// dist/ (both are one level below the package root, beside proto/).
const PROTO_DIR = fileURLToPath(new URL('../proto/', import.meta.url))

/**
 * One decoding convention for every message, whether grpc-js decodes it
 * (the stream's own messages) or protobufjs does (the payloads inside
 * `google.protobuf.Any`): camelCase fields, enums as numbers (so that an
 * unknown value stays visible and can be refused), 64-bit integers as
 * strings, bytes as Buffers, defaults filled in, and the name of the set
 * member of each `oneof` in a virtual field.
 */
export const DECODE_OPTIONS = {
  keepCase: false,
  longs: String,
  enums: Number,
  bytes: Buffer,
  defaults: true,
  arrays: true,
  objects: true,
  oneofs: true,
} as const satisfies Options & protobuf.IConversionOptions

const FILES = ['xds.proto', 'workload.proto', 'authorization.proto', 'zds.proto', 'citadel.proto']

let definition: PackageDefinition | undefined
let root: protobuf.Root | undefined

/** The vendored protos as grpc-js service definitions. */
export function packageDefinition(): PackageDefinition {
  definition ??= loadSync(FILES, { ...DECODE_OPTIONS, includeDirs: [PROTO_DIR] })
  return definition
}

/** The vendored protos as protobufjs types, for the payloads of `Any` and ZDS's bare messages. */
export function protoRoot(): protobuf.Root {
  if (root === undefined) {
    const loaded = new protobuf.Root()
    loaded.resolvePath = (_origin, target) => (target.startsWith('google/protobuf/') ? target : `${PROTO_DIR}${target}`)
    loaded.loadSync(FILES, { keepCase: false })
    loaded.resolveAll()
    root = loaded
  }
  return root
}

/** A message type of the vendored protos, by its full name (`istio.workload.Address`). */
export function messageType(name: string): protobuf.Type {
  return protoRoot().lookupType(name)
}

/** Decodes `bytes` as `type` with {@link DECODE_OPTIONS}; throws on malformed input. */
export function decodeMessage<T>(type: protobuf.Type, bytes: Uint8Array): T {
  return type.toObject(type.decode(bytes), DECODE_OPTIONS) as T
}

/** The service definition of `AggregatedDiscoveryService`, for a client or a test server. */
export function adsService(): grpc.ServiceDefinition {
  const loaded = grpc.loadPackageDefinition(packageDefinition()) as unknown as {
    envoy: { service: { discovery: { v3: { AggregatedDiscoveryService: grpc.ServiceClientConstructor } } } }
  }
  return loaded.envoy.service.discovery.v3.AggregatedDiscoveryService.service
}

/** The full gRPC path of the delta ADS stream, the only method the client calls. */
export const DELTA_ADS_METHOD = '/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources'
