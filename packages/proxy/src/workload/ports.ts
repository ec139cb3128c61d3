import { HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT, invalidArgument } from '@ambientkit/core'

/** Ports of a workload proxy's listeners inside the pod's network namespace. */
export interface WorkloadProxyPorts {
  /** Outbound capture (the REDIRECT target of the pod's nat OUTPUT rules). Default 15001. */
  readonly outbound: number
  /** Inbound plaintext (the REDIRECT target of nat PREROUTING). Default 15006. */
  readonly inboundPlaintext: number
  /** Inbound HBONE (mTLS, HTTP/2 CONNECT). Default 15008. */
  readonly inbound: number
}

/** Istio's ports, which our capture rules redirect to. */
export const DEFAULT_WORKLOAD_PROXY_PORTS: WorkloadProxyPorts = Object.freeze({ outbound: OUTBOUND_PORT, inboundPlaintext: INBOUND_PORT, inbound: HBONE_PORT })

/** The ports with defaults filled in, checked: each 1-65535, all three different. */
export function resolvePorts(ports: Partial<WorkloadProxyPorts> | undefined): WorkloadProxyPorts {
  const resolved = { ...DEFAULT_WORKLOAD_PROXY_PORTS, ...ports }
  for (const [name, port] of Object.entries(resolved)) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArgument(`ports.${name}`, port, 'a port 1-65535')
  }
  if (new Set(Object.values(resolved)).size !== 3) throw invalidArgument('ports', resolved, 'three different ports')
  return resolved
}
