/*
 * The vendored messages as this package reads them: the stream's messages
 * as grpc-js decodes them with DECODE_OPTIONS (protos.ts), the payloads of
 * `Any` and ZDS's messages as protobufjs's own messages (decodeMessage).
 * Both read the same: camelCase, enums as numbers, bytes as Buffers,
 * defaults for unset fields, maps as objects, the set member of a `oneof`
 * named in its virtual field. Only the fields this package reads or shows
 * are typed.
 */

export interface XdsAny {
  typeUrl: string
  value: Buffer
}

export interface XdsResource {
  name: string
  aliases: string[]
  version: string
  resource: XdsAny | null
}

export interface DeltaDiscoveryResponse {
  systemVersionInfo: string
  resources: XdsResource[]
  typeUrl: string
  removedResources: string[]
  nonce: string
}

/** What the client sends; grpc-js encodes it (fields left out are defaults). */
export interface DeltaDiscoveryRequest {
  node?: { id: string; metadata: { fields: Record<string, ProtoValue> } }
  typeUrl: string
  resourceNamesSubscribe?: string[]
  resourceNamesUnsubscribe?: string[]
  initialResourceVersions?: Record<string, string>
  responseNonce?: string
  errorDetail?: { code: number; message: string }
}

/** google.protobuf.Value in protobufjs's object form. */
export type ProtoValue =
  | { nullValue: 0 }
  | { numberValue: number }
  | { stringValue: string }
  | { boolValue: boolean }
  | { structValue: { fields: Record<string, ProtoValue> } }
  | { listValue: { values: ProtoValue[] } }

export interface XdsNetworkAddress {
  network: string
  address: Buffer
  /** proto3 `optional`: null or absent when unset. */
  length?: number | null
}

export interface XdsGatewayAddress {
  hostname: { namespace: string; hostname: string } | null
  address: XdsNetworkAddress | null
  hboneMtlsPort: number
  destination?: 'hostname' | 'address'
}

export interface XdsPort {
  servicePort: number
  targetPort: number
  appProtocol: number
}

export interface XdsExtension {
  name: string
  config: XdsAny | null
}

export interface XdsWorkload {
  uid: string
  name: string
  namespace: string
  addresses: Buffer[]
  hostname: string
  network: string
  tunnelProtocol: number
  trustDomain: string
  serviceAccount: string
  waypoint: XdsGatewayAddress | null
  networkGateway: XdsGatewayAddress | null
  node: string
  canonicalName: string
  canonicalRevision: string
  workloadType: number
  workloadName: string
  nativeTunnel: boolean
  applicationTunnel: { protocol: number; port: number } | null
  services: Record<string, { ports: XdsPort[] }>
  authorizationPolicies: string[]
  status: number
  clusterId: string
  locality: { region: string; zone: string; subzone: string } | null
  networkMode: number
  extensions: XdsExtension[]
  capacity: { value: number } | null
}

export interface XdsService {
  name: string
  namespace: string
  hostname: string
  addresses: XdsNetworkAddress[]
  ports: XdsPort[]
  subjectAltNames: string[]
  waypoint: XdsGatewayAddress | null
  loadBalancing: { routingPreference: number[]; mode: number; healthPolicy: number } | null
  ipFamilies: number
  extensions: XdsExtension[]
  canonical: boolean
  ingressUseWaypoint: boolean
  weightedWaypoints: Array<{ destination: XdsGatewayAddress | null; weight: number }>
  visibility: number
}

export interface XdsAddress {
  workload: XdsWorkload | null
  service: XdsService | null
  type?: 'workload' | 'service'
}

export interface XdsStringMatch {
  exact?: string
  prefix?: string
  suffix?: string
  presence?: object
  matchType?: 'exact' | 'prefix' | 'suffix' | 'presence'
}

export interface XdsCidr {
  address: Buffer
  length: number
}

export interface XdsMatch {
  namespaces: XdsStringMatch[]
  notNamespaces: XdsStringMatch[]
  principals: XdsStringMatch[]
  notPrincipals: XdsStringMatch[]
  sourceIps: XdsCidr[]
  notSourceIps: XdsCidr[]
  destinationIps: XdsCidr[]
  notDestinationIps: XdsCidr[]
  destinationPorts: number[]
  notDestinationPorts: number[]
  serviceAccounts: Array<{ namespace: string; serviceAccount: string }>
  notServiceAccounts: Array<{ namespace: string; serviceAccount: string }>
  extensions: XdsExtension[]
}

export interface XdsAuthorization {
  name: string
  namespace: string
  scope: number
  action: number
  rules: Array<{ clauses: Array<{ matches: XdsMatch[] }> }>
  dryRun: boolean
  extensions: XdsExtension[]
}
