export { createDnsProxy, type DnsProxy, type DnsProxyOptions } from './dns-proxy'
export { type DnsDropReason, type DnsMetrics, type DnsRequestLabels } from './metrics'
export { kubernetesSearchDomains } from './names'
export { DnsErrorCode } from './upstreams'
