/**
 * The SPIFFE Workload API for Node.js. {@link createWorkloadApiServer} serves
 * it on a unix socket to the applications of a node's pods, attesting each
 * caller from the socket (SO_PEERCRED, then the caller's network namespace
 * or cgroup, then its pod), so an app gets exactly its own SVID, renewed
 * over the stream. {@link createWorkloadApiSource} is the client side as an
 * `IdentitySource`: a node agent can take its identities from a SPIRE agent.
 *
 * @example
 * ```ts
 * import type { IdentityManager } from '@ambientkit/identity'
 * import { createNetnsAttestor, createWorkloadApiServer } from '@ambientkit/workload-api'
 *
 * declare const identities: IdentityManager // holds the pods' SVIDs
 * const server = await createWorkloadApiServer({
 *   socketPath: '/run/ambientkit/workload-api/socket',
 *   manager: identities,
 *   // A caller in a pod's network namespace gets that pod's identity.
 *   attest: createNetnsAttestor(() => [{ netnsPath: '/run/netns/pod-a', identity: 'spiffe://cluster.local/ns/shop/sa/api' }]),
 * })
 * ```
 *
 * @packageDocumentation
 */
export { createNetnsAttestor, readCallerProcess, type Attestor, type CallerProcess, type EnrolledPod } from './attest'
export { createWorkloadApiServer, type WorkloadApiLimits, type WorkloadApiServer, type WorkloadApiServerOptions } from './server'
export { createWorkloadApiSource, workloadApiTarget, type WorkloadApiSource, type WorkloadApiSourceOptions } from './client'
