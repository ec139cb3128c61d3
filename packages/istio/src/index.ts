/**
 * Istio's control-plane protocols for ambientkit, so that a node agent can
 * take ztunnel's place: workloads, services and authorization policies from
 * istiod over WDS (delta xDS) into core's registry and policy store, and pods
 * handed over by istio-cni over ZDS. Core and the proxy stay free of Istio's
 * protocols; the vendored `.proto` files ship in `proto/`.
 *
 * @example
 * ```ts
 * import { createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
 * import { createWdsClient, wdsOptionsFromEnv } from '@ambientkit/istio'
 *
 * const registry = createWorkloadRegistry()
 * const policies = createPolicyStore()
 * const wds = createWdsClient({ ...wdsOptionsFromEnv(), registry, policies })
 * await wds.start() // istiod's workloads and policies are in force
 * ```
 *
 * @packageDocumentation
 */
export type { ComponentRegistry } from './component'
export { IstioErrorCode } from './errors'
export {
  createWdsClient,
  DEFAULT_WDS_LIMITS,
  type JsonValue,
  type WdsClient,
  type WdsClientOptions,
  type WdsConfigDump,
  type WdsEvent,
  type WdsNode,
  type WdsTerminationReason,
  type WdsToken,
} from './wds-client'
export { ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, type RejectedResource, type WdsLimits, type WdsStateDump } from './wds-state'
export { CANONICAL_NAME_LABEL, CANONICAL_REVISION_LABEL, type GatewayView, type PolicyView, type ServiceView, type WorkloadView } from './convert'
export { createZdsPodSource, type ZdsConfigDump, type ZdsPodSource, type ZdsPodSourceOptions } from './zds-source'
export { wdsOptionsFromEnv, zdsOptionsFromEnv, type WdsEnvOptions } from './env'
export { adsServiceDefinition, encodeMessage, type IstioMessageName } from './protos'
