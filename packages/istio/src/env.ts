import { existsSync } from 'node:fs'
import { invalidArgument } from '@ambientkit/core'
import type { JsonValue, WdsClientOptions } from './wds-client'
import type { ZdsPodSourceOptions } from './zds-source'

/** What {@link wdsOptionsFromEnv} reads: every option of the WDS client but the registry and the policy store. */
export type WdsEnvOptions = Omit<WdsClientOptions, 'registry' | 'policies'>

/**
 * The WDS client's options from ztunnel's environment variables, so that a
 * DaemonSet made for ztunnel configures ambientkit unchanged:
 *
 * | variable | option |
 * | --- | --- |
 * | `XDS_ADDRESS` (empty: no xDS, returns `undefined`) | `address`; default `https://istiod.istio-system.svc:15012` in Kubernetes (`KUBERNETES_SERVICE_HOST` set), else `https://localhost:15012` |
 * | `XDS_ROOT_CA` | `rootCert` (a file, inline PEM or `SYSTEM`) |
 * | `ALT_XDS_HOSTNAME` | `altHostname` |
 * | `AUTH_TOKEN` | `token`: a file when one exists at that path, else the token itself |
 * | `ISTIO_META_CLUSTER_ID`, else `CLUSTER_ID` | `clusterId` |
 * | `XDS_HEADER_<NAME>` | `headers[<name>]` |
 * | `INSTANCE_IP`, `POD_NAME`, `POD_NAMESPACE`, `NODE_NAME` | `node.ip`, `.podName`, `.podNamespace`, `.nodeName` |
 * | `ISTIO_META_<KEY>`, `ISTIO_METAJSON_<KEY>` (JSON) | `node.metadata[<KEY>]` |
 *
 * @throws `ERR_AMBIENT_INVALID_ARGUMENT` for an `ISTIO_METAJSON_*` value that is not JSON.
 *
 * @example
 * ```ts
 * import { createPolicyStore, createWorkloadRegistry } from '@ambientkit/core'
 * import { createWdsClient, wdsOptionsFromEnv } from '@ambientkit/istio'
 *
 * const registry = createWorkloadRegistry()
 * const policies = createPolicyStore()
 * const options = wdsOptionsFromEnv()
 * if (options !== undefined) createWdsClient({ ...options, registry, policies })
 * ```
 */
export function wdsOptionsFromEnv(env: Readonly<Record<string, string | undefined>> = process.env): WdsEnvOptions | undefined {
  if (env.XDS_ADDRESS === '') return undefined
  const metadata: Record<string, JsonValue> = {}
  const headers: Record<string, string> = {}
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined) continue
    if (name.startsWith('ISTIO_METAJSON_')) {
      try {
        metadata[name.slice('ISTIO_METAJSON_'.length)] = JSON.parse(value) as JsonValue
      } catch {
        throw invalidArgument(name, value, 'JSON')
      }
    } else if (name.startsWith('ISTIO_META_')) {
      metadata[name.slice('ISTIO_META_'.length)] = value
    } else if (name.startsWith('XDS_HEADER_')) {
      headers[name.slice('XDS_HEADER_'.length).toLowerCase()] = value
    }
  }
  const token = env.AUTH_TOKEN
  return {
    address: env.XDS_ADDRESS ?? (env.KUBERNETES_SERVICE_HOST !== undefined ? 'https://istiod.istio-system.svc:15012' : 'https://localhost:15012'),
    ...(env.XDS_ROOT_CA === undefined ? {} : { rootCert: env.XDS_ROOT_CA }),
    ...(env.ALT_XDS_HOSTNAME === undefined ? {} : { altHostname: env.ALT_XDS_HOSTNAME }),
    ...(token === undefined ? {} : { token: existsSync(token) ? { file: token } : { value: token } }),
    clusterId: env.ISTIO_META_CLUSTER_ID ?? env.CLUSTER_ID ?? 'Kubernetes',
    ...(Object.keys(headers).length === 0 ? {} : { headers }),
    node: {
      ...(env.INSTANCE_IP === undefined ? {} : { ip: env.INSTANCE_IP }),
      ...(env.POD_NAME === undefined ? {} : { podName: env.POD_NAME }),
      ...(env.POD_NAMESPACE === undefined ? {} : { podNamespace: env.POD_NAMESPACE }),
      ...(env.NODE_NAME === undefined ? {} : { nodeName: env.NODE_NAME }),
      metadata,
    },
  }
}

/**
 * The ZDS source's options from ztunnel's environment: `INPOD_UDS` (the
 * socket), `NODE_NAME` (required), `ISTIO_META_CLUSTER_ID` else `CLUSTER_ID`,
 * and `TRUST_DOMAIN`.
 *
 * @throws `ERR_AMBIENT_INVALID_ARGUMENT` when `NODE_NAME` is not set.
 */
export function zdsOptionsFromEnv(env: Readonly<Record<string, string | undefined>> = process.env): Omit<ZdsPodSourceOptions, 'registry'> {
  if (env.NODE_NAME === undefined || env.NODE_NAME === '') throw invalidArgument('NODE_NAME', env.NODE_NAME, 'the name of this node')
  const clusterId = env.ISTIO_META_CLUSTER_ID ?? env.CLUSTER_ID
  return {
    nodeName: env.NODE_NAME,
    ...(env.INPOD_UDS === undefined ? {} : { path: env.INPOD_UDS }),
    ...(clusterId === undefined ? {} : { clusterId }),
    ...(env.TRUST_DOMAIN === undefined ? {} : { trustDomain: env.TRUST_DOMAIN }),
  }
}
