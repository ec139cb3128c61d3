import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { loadSync } from '@grpc/proto-loader'

// The vendored .proto ships beside src/ and dist/ (one level below the package root).
const PROTO_DIR = fileURLToPath(new URL('../proto/', import.meta.url))

let service: grpc.ServiceClientConstructor | undefined

/**
 * `SpiffeWorkloadAPI`, loaded from the vendored workloadapi.proto at first
 * use (field names as the .proto spells them; google.protobuf types from
 * protobufjs, in camelCase).
 */
export function workloadApiService(): grpc.ServiceClientConstructor {
  if (service !== undefined) return service
  if (!existsSync(PROTO_DIR)) throw new Error(`the vendored workloadapi.proto is missing from ${PROTO_DIR}`)
  const definition = loadSync('workloadapi.proto', { includeDirs: [PROTO_DIR], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true })
  service = (grpc.loadPackageDefinition(definition) as unknown as { SpiffeWorkloadAPI: grpc.ServiceClientConstructor }).SpiffeWorkloadAPI
  return service
}

/** X509SVID. */
export interface X509SvidMessage {
  spiffe_id: string
  x509_svid: Buffer
  x509_svid_key: Buffer
  bundle: Buffer
  hint: string
}

/** X509SVIDResponse. */
export interface X509SvidResponse {
  svids: X509SvidMessage[]
  crl: Buffer[]
  federated_bundles: Record<string, Buffer>
}

/** X509BundlesResponse. */
export interface X509BundlesResponse {
  crl: Buffer[]
  bundles: Record<string, Buffer>
}

/** JWTSVIDRequest. */
export interface JwtSvidRequest {
  audience: string[]
  spiffe_id: string
}

/** JWTSVIDResponse. */
export interface JwtSvidResponse {
  svids: Array<{ spiffe_id: string; svid: string; hint: string }>
}

/** JWTBundlesResponse. */
export interface JwtBundlesResponse {
  bundles: Record<string, Buffer>
}

/** ValidateJWTSVIDRequest. */
export interface ValidateJwtSvidRequest {
  audience: string
  svid: string
}

/** google.protobuf.Value as protobufjs writes it. */
export type ProtoValue =
  | { nullValue: 'NULL_VALUE' }
  | { numberValue: number }
  | { stringValue: string }
  | { boolValue: boolean }
  | { structValue: { fields: Record<string, ProtoValue> } }
  | { listValue: { values: ProtoValue[] } }

/** A JSON value as google.protobuf.Value. */
export function protoValue(value: unknown): ProtoValue {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' }
  if (typeof value === 'number') return { numberValue: value }
  if (typeof value === 'string') return { stringValue: value }
  if (typeof value === 'boolean') return { boolValue: value }
  if (Array.isArray(value)) return { listValue: { values: value.map(protoValue) } }
  return { structValue: protoStruct(value as Record<string, unknown>) }
}

/** A JSON object as google.protobuf.Struct. */
export function protoStruct(object: Record<string, unknown>): { fields: Record<string, ProtoValue> } {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, protoValue(v)])) }
}

/** The metadata every Workload API call must carry (SPIFFE Workload Endpoint §4). */
export const SECURITY_HEADER = 'workload.spiffe.io'
