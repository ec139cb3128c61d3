import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { loadSync } from '@grpc/proto-loader'

// The vendored .proto files ship beside src/ and dist/ (one level below the package root).
const PROTO_DIR = fileURLToPath(new URL('../proto/', import.meta.url))

/**
 * The package's services, loaded from the vendored .proto files at first use.
 * Field names stay as the .proto spells them (keepCase); int64 values are
 * numbers (a lifetime in seconds never needs 64 bits); google.protobuf
 * well-known types come from protobufjs, which names their fields in
 * camelCase (`stringValue`).
 */
export interface CaServices {
  IstioCertificateService: grpc.ServiceClientConstructor
  MeshIdentityService: grpc.ServiceClientConstructor
}

let services: CaServices | undefined

export function caServices(): CaServices {
  if (services !== undefined) return services
  if (!existsSync(PROTO_DIR)) throw new Error(`the vendored .proto files are missing from ${PROTO_DIR}`)
  const definition = loadSync(['istio/v1/auth/ca.proto', 'ambientkit/identity/v1/identity.proto'], {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  })
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    istio: { v1: { auth: { IstioCertificateService: grpc.ServiceClientConstructor } } }
    ambientkit: { identity: { v1: { MeshIdentityService: grpc.ServiceClientConstructor } } }
  }
  services = {
    IstioCertificateService: loaded.istio.v1.auth.IstioCertificateService,
    MeshIdentityService: loaded.ambientkit.identity.v1.MeshIdentityService,
  }
  return services
}

/** google.protobuf.Struct as protobufjs reads and writes it. */
export interface Struct {
  fields?: Record<string, { stringValue?: string; kind?: string } | undefined>
}

/** istio.v1.auth.IstioCertificateRequest. */
export interface IstioCertificateRequest {
  csr: string
  validity_duration: number
  metadata: Struct | null
}

/** istio.v1.auth.IstioCertificateResponse. */
export interface IstioCertificateResponse {
  cert_chain: string[]
  root_cert?: { ca_cert: string[] } | null
}

/** ambientkit.identity.v1.MintJWTSVIDRequest. */
export interface MintJwtSvidRequest {
  audience: string[]
  validity_duration: number
  metadata: Struct | null
}

/** ambientkit.identity.v1.MintJWTSVIDResponse. */
export interface MintJwtSvidResponse {
  token: string
}

/** ambientkit.identity.v1.WatchBundlesResponse. */
export interface WatchBundlesResponse {
  bundles: Record<string, string>
}

/** The metadata key Istio's CA reads the identity a node agent asks for from. */
export const IMPERSONATED_IDENTITY = 'ImpersonatedIdentity'

/** A Struct holding string values. */
export function stringStruct(values: Record<string, string>): Struct {
  return { fields: Object.fromEntries(Object.entries(values).map(([k, v]) => [k, { stringValue: v }])) }
}

/**
 * A string field of a Struct: `undefined` when absent, `null` when present
 * but not a string (a malformed request, not an absent field).
 */
export function structString(struct: Struct | null | undefined, key: string): string | null | undefined {
  const value = struct?.fields?.[key]
  if (value === undefined || value === null) return undefined
  return value.kind === 'stringValue' && typeof value.stringValue === 'string' ? value.stringValue : null
}
