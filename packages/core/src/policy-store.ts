import { loadAuthorizationPolicy, type AuthorizationPolicy } from './authorization'
import { createSubscribers, type Subscribable } from './lifecycle'

/** What a {@link PolicyStore}'s subscribers get after every change: the policies in force from now on. */
export interface PolicyChange {
  readonly type: 'policies-changed'
  readonly policies: readonly AuthorizationPolicy[]
}

/**
 * The set of authorization policies in force, shared by every proxy on a
 * node. Subscribers get a {@link PolicyChange} after every change.
 */
export interface PolicyStore extends Subscribable<PolicyChange> {
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
  const subscribers = createSubscribers<PolicyChange>({ what: 'policy store' })
  const key = (p: { namespace: string; name: string }): string => `${p.namespace}/${p.name}`
  const changed = (): void => {
    snapshot = Object.freeze([...policies.values()])
    subscribers.emit({ type: 'policies-changed', policies: snapshot })
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
    subscribe: subscribers.subscribe,
  }
}
