import type { Service, WorkloadRegistry } from '@ambientkit/core'

/** Who asks: what a name means depends on the client's namespace and search domains. */
export interface NameContext {
  /** The client workload's namespace: a one-label name is a service of this namespace. */
  readonly namespace: string
  /** The cluster's DNS domain, lower case, without a trailing dot (`cluster.local`). */
  readonly clusterDomain: string
  /** The client's search domains, lower case, without trailing dots, in order. */
  readonly searchDomains: readonly string[]
}

/** A mesh service that answers a queried name. */
export interface MeshNameMatch {
  readonly service: Service
  /**
   * Set when the name matched only once a search domain was taken off
   * (`api.example.com.shop.svc.cluster.local` for `api.example.com`): the
   * answer is a CNAME from the queried name to this one, whose addresses
   * follow. It keeps the case of the query.
   */
  readonly canonicalName?: string
}

/**
 * The search domains Kubernetes gives a pod of `namespace` with the default
 * DNS policy, in order (`<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`).
 */
export function kubernetesSearchDomains(namespace: string, clusterDomain: string): string[] {
  return [`${namespace}.svc.${clusterDomain}`, `svc.${clusterDomain}`, clusterDomain].map((d) => d.toLowerCase())
}

/** A name as DNS compares it: lower case, without the root's trailing dot. */
export function normalizeName(name: string): string {
  return (name.endsWith('.') ? name.slice(0, -1) : name).toLowerCase()
}

/**
 * The Kubernetes service FQDN a short name stands for, as ztunnel expands
 * them: `svc` → `svc.<ns>.svc.<domain>`, `svc.ns` → `svc.ns.svc.<domain>`,
 * `svc.ns.svc` → `svc.ns.svc.<domain>`. Other names have none.
 */
function kubernetesFqdn(name: string, context: NameContext): string | undefined {
  const labels = name.split('.')
  if (labels.length === 1) return `${name}.${context.namespace}.svc.${context.clusterDomain}`
  if (labels.length === 2) return `${name}.svc.${context.clusterDomain}`
  if (labels.length === 3 && labels[2] === 'svc') return `${name}.${context.clusterDomain}`
  return undefined
}

/** `name`, then `*.` wildcards of decreasing specificity: `a.b.c` → `a.b.c`, `*.b.c`, `*.c`. */
function withWildcards(name: string): string[] {
  const out = [name]
  for (let dot = name.indexOf('.'); dot >= 0; dot = name.indexOf('.', dot + 1)) out.push(`*${name.slice(dot)}`)
  return out
}

/**
 * Finds the mesh service that answers `queried` for a client, as
 * ztunnel's DNS proxy does: the name itself, the Kubernetes FQDN it is
 * short for, and the same after taking off each of the client's search
 * domains (a resolver tries `name.<search domain>` first); each of them
 * exact, then as wildcard host names. Services without a VIP are left to
 * the upstream resolver (a headless service's DNS is Kubernetes'). When
 * several namespaces have the name, the client's own wins.
 */
export function findMeshService(registry: Pick<WorkloadRegistry, 'servicesByHostname'>, queried: string, context: NameContext): MeshNameMatch | undefined {
  const name = normalizeName(queried)
  if (name === '' || name === '.') return undefined
  const aliases: Array<{ name: string; stripped?: string }> = []
  const seen = new Set<string>()
  const add = (alias: string, stripped?: string): void => {
    if (seen.has(alias)) return
    seen.add(alias)
    aliases.push({ name: alias, stripped })
  }
  const addWithFqdn = (alias: string, stripped?: string): void => {
    add(alias, stripped)
    const fqdn = kubernetesFqdn(alias, context)
    if (fqdn !== undefined) add(fqdn, stripped)
  }
  addWithFqdn(name)
  for (const domain of context.searchDomains) {
    if (name.length > domain.length + 1 && name.endsWith(`.${domain}`)) {
      const stripped = name.slice(0, name.length - domain.length - 1)
      addWithFqdn(stripped, stripped)
    }
  }
  for (const alias of aliases) {
    for (const candidate of withWildcards(alias.name)) {
      const services = registry.servicesByHostname(candidate).filter((s) => s.vips.length > 0)
      const service = services.find((s) => s.namespace === context.namespace) ?? services[0]
      if (service === undefined) continue
      // A wildcard answers the queried name itself: no CNAME to a name that is only a pattern.
      if (alias.stripped === undefined || candidate !== alias.name) return { service }
      const queriedTrimmed = queried.endsWith('.') ? queried.slice(0, -1) : queried
      return { service, canonicalName: queriedTrimmed.slice(0, alias.stripped.length) }
    }
  }
  return undefined
}
