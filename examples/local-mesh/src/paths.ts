import { fileURLToPath } from 'node:url'
import { join } from 'node:path'

/**
 * Every namespace the demo creates starts with this, so `--down` finds them
 * after a crash. Override with AMBIENTKIT_LOCAL_PREFIX (a lower-case letter,
 * then up to seven letters or digits) to run two meshes side by side.
 */
export const PREFIX = demoPrefix(process.env.AMBIENTKIT_LOCAL_PREFIX)

function demoPrefix(value: string | undefined): string {
  if (value === undefined) return 'akm'
  if (!/^[a-z][a-z0-9]{0,7}$/.test(value)) {
    throw new Error(`AMBIENTKIT_LOCAL_PREFIX: expected a lower-case letter, then up to seven letters or digits, got ${JSON.stringify(value)}`)
  }
  return value
}

/** Where the demo keeps its CA, sockets, pid files and logs. Override with AMBIENTKIT_LOCAL_STATE_DIR. */
export const STATE_DIR = process.env.AMBIENTKIT_LOCAL_STATE_DIR ?? '/run/ambientkit-local'

/** The example's folder (examples/local-mesh). */
export const EXAMPLE_DIR = fileURLToPath(new URL('..', import.meta.url))

/** The repository root: its tsconfig maps @ambientkit/* to the package sources. */
export const ROOT_DIR = join(EXAMPLE_DIR, '..', '..')

/** The default mesh.yaml. */
export const DEFAULT_CONFIG = join(EXAMPLE_DIR, 'mesh.yaml')

/** Files under the state directory. */
export const state = {
  socket: (dir = STATE_DIR) => join(dir, 'control-plane.sock'),
  caDir: (dir = STATE_DIR) => join(dir, 'ca'),
  /** The CA service (Istio's certificate API over TLS on a unix socket). */
  caSocket: (dir = STATE_DIR) => join(dir, 'ca.sock'),
  /** A node's credential for the CA service, mode 0600: root only. */
  nodeCredential: (node: string, dir = STATE_DIR) => join(dir, 'nodes', `${node}.credential`),
  /** The SPIFFE Workload API a node's agent serves to its pods (pods share this filesystem). */
  workloadApiSocket: (node: string, dir = STATE_DIR) => join(dir, 'workload-api', node, 'socket'),
  /** One JSON line per issuance and refusal of the CA. */
  caAudit: (dir = STATE_DIR) => join(dir, 'logs', 'ca-audit.jsonl'),
  pids: (dir = STATE_DIR) => join(dir, 'pids'),
  logs: (dir = STATE_DIR) => join(dir, 'logs'),
  accessLog: (node: string, dir = STATE_DIR) => join(dir, 'logs', `${node}.access.jsonl`),
  agentState: (node: string, dir = STATE_DIR) => join(dir, `${node}.enrolled.json`),
  capture: (dir = STATE_DIR) => join(dir, 'node-link.pcap'),
}

/** Network namespace names (as `ip netns` knows them). */
export const netnsName = {
  node: (node: string) => `${PREFIX}-n-${node}`,
  pod: (pod: { namespace: string; name: string }) => `${PREFIX}-p-${pod.namespace}-${pod.name}`,
}

/** `/run/netns/<name>`: what `openNetns` and the node agent take. */
export const netnsPath = (name: string): string => `/run/netns/${name}`

/** The control plane's SPIFFE ID: what agents check the CA service presents. */
export const controlPlaneId = (trustDomain: string): string => `spiffe://${trustDomain}/ns/ambientkit-system/sa/control-plane`

/** The identity a node credential authenticates: node agents, trusted to ask for their pods' identities. */
export const nodeAgentId = (trustDomain: string): string => `spiffe://${trustDomain}/ns/ambientkit-system/sa/ambientkit-node`

/** Port of each node proxy's admin server, on 127.0.0.1 inside the node's namespace. */
export { ADMIN_PORT } from '@ambientkit/core'
