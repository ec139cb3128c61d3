import { invalidArgument, parseSocketAddress, type SocketAddress } from '@ambientkit/core'
import { wdsOptionsFromEnv, zdsOptionsFromEnv, type WdsEnvOptions, type ZdsPodSourceOptions } from '@ambientkit/istio'

/** Where the node's servers listen: ztunnel's ports. */
export interface IstioNodeAddresses {
  /** `/healthz/ready` for the kubelet (ztunnel's status port 15021, all addresses). */
  readonly status: SocketAddress
  /** `/metrics` for Prometheus (ztunnel's stats port 15020, all addresses). */
  readonly stats: SocketAddress
  /** The node proxy's admin server, `/config_dump` included (ztunnel's admin port 15000, loopback only). */
  readonly admin: SocketAddress
}

/** Everything the node agent reads from its environment. */
export interface IstioNodeConfig {
  readonly nodeName: string
  readonly trustDomain: string
  readonly clusterId: string
  /** WDS client options; `undefined` when `XDS_ADDRESS` is empty (no istiod). */
  readonly wds: WdsEnvOptions | undefined
  readonly zds: Omit<ZdsPodSourceOptions, 'registry' | 'nodeProxy'>
  readonly ca: {
    readonly address: string
    /** The file of the roots istiod's certificate chains to (the `istio-ca-root-cert` ConfigMap). */
    readonly rootCertFile: string
    /** The projected service-account token (audience `istio-ca`). */
    readonly tokenFile: string
  }
  readonly addresses: IstioNodeAddresses
}

const ISTIOD = 'https://istiod.istio-system.svc:15012'

/**
 * The node agent's configuration from ztunnel's environment variables, so
 * that ztunnel's DaemonSet runs it unchanged: `NODE_NAME` (required),
 * `TRUST_DOMAIN` (default `cluster.local`), `ISTIO_META_CLUSTER_ID` or
 * `CLUSTER_ID` (`Kubernetes`), `CA_ADDRESS` (istiod's 15012), `CA_ROOT_CA`
 * (`./var/run/secrets/istio/root-cert.pem`), `AUTH_TOKEN`
 * (`./var/run/secrets/tokens/istio-token`), `INPOD_UDS`
 * (`/var/run/ztunnel/ztunnel.sock`) and the WDS client's (`XDS_ADDRESS`,
 * `XDS_ROOT_CA`...: `wdsOptionsFromEnv`). Relative paths are from the
 * working directory, `/` in the image, as in ztunnel's. The ports are
 * ztunnel's; `AMBIENTKIT_STATUS_ADDRESS`, `AMBIENTKIT_STATS_ADDRESS` and
 * `AMBIENTKIT_ADMIN_ADDRESS` (`ip:port`, port 0 for any) move them.
 *
 * @throws `ERR_AMBIENT_INVALID_ARGUMENT` naming the variable that is wrong.
 */
export function istioNodeConfig(env: Readonly<Record<string, string | undefined>>): IstioNodeConfig {
  const zds = zdsOptionsFromEnv(env)
  const address = (name: string, fallback: string): SocketAddress => {
    const value = env[name] ?? fallback
    try {
      // Port 0 (any free port, for tests) is no port to core's parser.
      const any = value.endsWith(':0')
      const parsed = parseSocketAddress(any ? `${value.slice(0, -1)}1` : value)
      return any ? { ...parsed, port: 0 } : parsed
    } catch {
      throw invalidArgument(name, value, 'an ip:port address')
    }
  }
  return {
    nodeName: zds.nodeName,
    trustDomain: env.TRUST_DOMAIN ?? 'cluster.local',
    clusterId: env.ISTIO_META_CLUSTER_ID ?? env.CLUSTER_ID ?? 'Kubernetes',
    wds: wdsOptionsFromEnv(env),
    zds,
    ca: {
      address: env.CA_ADDRESS ?? ISTIOD,
      rootCertFile: env.CA_ROOT_CA ?? './var/run/secrets/istio/root-cert.pem',
      tokenFile: env.AUTH_TOKEN ?? './var/run/secrets/tokens/istio-token',
    },
    addresses: {
      status: address('AMBIENTKIT_STATUS_ADDRESS', '0.0.0.0:15021'),
      stats: address('AMBIENTKIT_STATS_ADDRESS', '0.0.0.0:15020'),
      admin: address('AMBIENTKIT_ADMIN_ADDRESS', '127.0.0.1:15000'),
    },
  }
}
