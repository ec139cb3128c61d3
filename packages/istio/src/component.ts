/**
 * Where the Istio clients report their readiness and state: a node proxy's
 * `register` (`NodeProxy.register` of `@ambientkit/proxy`), described here by
 * its shape so this package does not depend on the proxy's.
 */
export interface ComponentRegistry {
  /** Adds a component to readiness and `/config_dump`; returns the function that removes it. */
  register(component: {
    readonly name: string
    notReady?(): string | undefined
    configDump?(): unknown
  }): () => void
}
