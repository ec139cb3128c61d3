import type { AbortOptions, LongLived, Subscribable } from './lifecycle'
import type { Workload } from './workload'

/** A pod a node agent should capture: its workload and where its network namespace is. */
export interface PodEnrollment {
  readonly workload: Workload
  /** A path that opens the pod's network namespace (`/var/run/netns/...` or `/proc/<pid>/ns/net`). */
  readonly netnsPath: string
}

/** A change in the set of pods a {@link PodSource} wants captured. */
export type PodSourceEvent =
  | { readonly type: 'upsert'; readonly pod: PodEnrollment }
  | { readonly type: 'remove'; readonly uid: string }

/**
 * Where a node agent learns which pods on its node belong in the mesh: the
 * local control plane of the single-machine mesh, or the Kubernetes API.
 * A node agent subscribes, then lists once to reconcile, then follows the
 * events.
 */
export interface PodSource extends LongLived, Subscribable<PodSourceEvent> {
  /** Every pod that should be captured on this node now. */
  list(options?: AbortOptions): Promise<PodEnrollment[]>
}
