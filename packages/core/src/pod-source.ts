import type { AbortOptions, LongLived, Subscribable } from './lifecycle'
import type { Workload } from './workload'

/** A pod a node agent should capture: its workload and where its network namespace is. */
export interface PodEnrollment {
  readonly workload: Workload
  /** A path that opens the pod's network namespace (`/var/run/netns/...` or `/proc/<pid>/ns/net`). */
  readonly netnsPath: string
  /**
   * Who installs the pod's capture rules. `'agent'` (default): the node
   * agent applies them on enrollment and removes them on release.
   * `'external'`: something else already did and will undo them (Istio's
   * CNI plugin, which hands pods over ZDS), so the agent only starts and
   * stops the pod's proxy, and never touches its rules.
   */
  readonly capture?: 'agent' | 'external'
}

/**
 * Called once by a consumer of a {@link PodSourceEvent} when it has carried
 * the event out (the pod's proxy listening, or stopped), with the error if
 * it could not. For sources whose protocol confirms each change, as ZDS
 * acknowledges each message only once the proxy is up.
 */
export type PodEventAck = (error?: Error) => void

/** A change in the set of pods a {@link PodSource} wants captured. */
export type PodSourceEvent =
  | { readonly type: 'upsert'; readonly pod: PodEnrollment; readonly ack?: PodEventAck }
  | { readonly type: 'remove'; readonly uid: string; readonly ack?: PodEventAck }

/**
 * Where a node agent learns which pods on its node belong in the mesh: the
 * local control plane of the single-machine mesh, the Kubernetes API, or
 * Istio's CNI plugin over ZDS. A node agent subscribes, then lists once to
 * reconcile, then follows the events, calling each event's `ack` (when it
 * has one) once the event is carried out.
 */
export interface PodSource extends LongLived, Subscribable<PodSourceEvent> {
  /** Every pod that should be captured on this node now. */
  list(options?: AbortOptions): Promise<PodEnrollment[]>
}
