import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { loadSync, type Options, type PackageDefinition } from '@grpc/proto-loader'
import protobuf from 'protobufjs'
import { invalidArgument } from '@ambientkit/core'

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

/**
 * Decodes `bytes` as `type`; throws on malformed input. The message is
 * protobufjs's own, not converted to a plain object (which costs about 40%
 * of applying a push): unset fields read as their defaults from its
 * prototype, unset message fields and proto3 `optional` ones as `null`,
 * and each `oneof` names its set member in a virtual field.
 */
export function decodeMessage<T>(type: protobuf.Type, bytes: Uint8Array): T {
  return type.decode(bytes) as unknown as T
}

/**
 * The service definition of Envoy's `AggregatedDiscoveryService` (the
 * vendored, trimmed xds.proto), for a grpc-js server standing in for istiod.
 * Its messages use this package's object form (camelCase, enums as numbers).
 */
export function adsServiceDefinition(): grpc.ServiceDefinition {
  const loaded = grpc.loadPackageDefinition(packageDefinition()) as unknown as {
    envoy: { service: { discovery: { v3: { AggregatedDiscoveryService: grpc.ServiceClientConstructor } } } }
  }
  return loaded.envoy.service.discovery.v3.AggregatedDiscoveryService.service
}

/** The messages of the vendored protos that {@link encodeMessage} takes, by full name. */
export type IstioMessageName =
  | 'istio.workload.Address'
  | 'istio.workload.Workload'
  | 'istio.workload.Service'
  | 'istio.security.Authorization'
  | 'istio.workload.zds.ZdsHello'
  | 'istio.workload.zds.WorkloadRequest'
  | 'istio.workload.zds.WorkloadResponse'

/**
 * Encodes a message of the vendored protos from its object form (camelCase
 * fields, bytes as Buffers, enums as numbers): the payload of an xDS
 * resource's `google.protobuf.Any`, or a ZDS message. For tools and test
 * servers that speak to this package.
 */
export function encodeMessage(name: IstioMessageName, value: Record<string, unknown>): Buffer {
  const type = messageType(name)
  const invalid = type.verify(value)
  if (invalid !== null) throw invalidArgument(name, value, `a valid ${name} (${invalid})`)
  return Buffer.from(type.encode(type.fromObject(value)).finish())
}

/** The full gRPC path of the delta ADS stream, the only method the client calls. */
export const DELTA_ADS_METHOD = '/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources'
