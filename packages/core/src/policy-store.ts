import { loadAuthorizationPolicy, type AuthorizationPolicy } from './authorization'

/** The set of authorization policies in force, shared by every proxy on a node. */
export interface PolicyStore {
  /** The policies in force now (validated, frozen). */
  list(): readonly AuthorizationPolicy[]
  /** Adds or replaces a policy by namespace and name. Validates first. */
  upsert(policy: unknown): AuthorizationPolicy
  /** Removes a policy; false if it was not there. */
  remove(namespace: string, name: string): boolean
  /** Replaces every policy at once, after validating all of them. */
  replaceAll(policies: readonly unknown[]): void
  /**
   * Removes, then adds or replaces, several policies as one change: all are
   * validated before any is applied, and subscribers are called once (a
   * control plane's push of many policies re-evaluates connections once).
   */
  update(changes: PolicyStoreChanges): void
  /** Calls `listener` after every change; returns the function that unsubscribes. */
  subscribe(listener: (policies: readonly AuthorizationPolicy[]) => void): () => void
}

/** The argument of {@link PolicyStore.update}. */
export interface PolicyStoreChanges {
  /** Policies to add or replace (by namespace and name). */
  readonly upsert?: readonly unknown[]
  /** Policies to remove; absent ones are ignored. */
  readonly remove?: ReadonlyArray<{ readonly namespace: string; readonly name: string }>
}

/**
 * Creates a {@link PolicyStore}. Proxies subscribe to it to re-evaluate
 * established connections when policies change.
 */
export function createPolicyStore(initial: readonly unknown[] = []): PolicyStore {
  let policies = new Map<string, AuthorizationPolicy>()
  let snapshot: readonly AuthorizationPolicy[] = []
  const listeners = new Set<(policies: readonly AuthorizationPolicy[]) => void>()
  const key = (p: { namespace: string; name: string }): string => `${p.namespace}/${p.name}`
  const changed = (): void => {
    snapshot = Object.freeze([...policies.values()])
    for (const listener of listeners) listener(snapshot)
  }
  const load = (list: readonly unknown[]): Map<string, AuthorizationPolicy> =>
    new Map(list.map((p) => loadAuthorizationPolicy(p)).map((p) => [key(p), p]))
  policies = load(initial)
  snapshot = Object.freeze([...policies.values()])
  return {
    list: () => snapshot,
    upsert(input) {
      const policy = loadAuthorizationPolicy(input)
      policies.set(key(policy), policy)
      changed()
      return policy
    },
    remove(namespace, name) {
      if (!policies.delete(key({ namespace, name }))) return false
      changed()
      return true
    },
    replaceAll(list) {
      policies = load(list)
      changed()
    },
    update({ upsert = [], remove = [] }) {
      const loaded = load(upsert)
      let dirty = loaded.size > 0
      for (const p of remove) dirty = policies.delete(key(p)) || dirty
      for (const [k, p] of loaded) policies.set(k, p)
      if (dirty) changed()
    },
    subscribe(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
  }
}
