/**
 * The numbers every part of the mesh agrees on: ports, marks and addresses
 * of in-pod capture and the proxy. They follow Istio ambient (in-pod
 * redirection, istio/istio cni/pkg/iptables and ztunnel's inpod mode) so an
 * ambientkit node can share a cluster with ztunnel. Defined here once;
 * `@ambientkit/redirect` and `@ambientkit/proxy` re-export the ones they use.
 */

/** Where outbound TCP from the pod's apps is redirected: the proxy's outbound listener. */
export const OUTBOUND_PORT = 15001
/** Where plaintext inbound TCP to the pod is redirected. */
export const INBOUND_PORT = 15006
/** The HBONE (mTLS HTTP/2 CONNECT) inbound port; never redirected. */
export const HBONE_PORT = 15008
/** Where DNS (UDP and TCP port 53) is redirected when DNS capture is on. */
export const DNS_PORT = 15053
/** The mark the proxy's own sockets carry so capture lets them through (no loop). */
export const PROXY_MARK = 0x539
/** The bits of the packet mark that capture owns and compares. */
export const PROXY_MASK = 0xfff
/** The conntrack mark of connections the proxy originated, restored onto their reply packets. */
export const CONNMARK = 0x111
/** The routing table holding a local default route for source-preserving inbound. */
export const ROUTE_TABLE = 100
/** The address the kubelet's probes are SNATed from (IPv4); such traffic is never captured. */
export const PROBE_ADDRESS_IPV4 = '169.254.7.127'
/** The address the kubelet's probes are SNATed from (IPv6). */
export const PROBE_ADDRESS_IPV6 = 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff'
/** The node proxy's admin server (readiness, metrics, config dump), as ztunnel's. */
export const ADMIN_PORT = 15021
