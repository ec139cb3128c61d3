import { readFile, stat } from 'node:fs/promises'
import type { PeerCredentials } from '@ambientkit/redirect'
import { SpiffeId } from '@ambientkit/identity'

/** What the server knows of a caller: the process at the other end of its connection. */
export interface CallerProcess {
  /** In the server's pid namespace; 0 when the caller is outside it (then nothing else is known). */
  readonly pid: number
  readonly uid: number
  readonly gid: number
  /** Its network namespace: `st_dev` and `st_ino` of `/proc/<pid>/ns/net`. */
  readonly netns: { readonly dev: number; readonly ino: number } | undefined
  /** Its `/proc/<pid>/cgroup` (a pod's cgroup path names the pod's UID on Kubernetes). */
  readonly cgroup: string | undefined
}

/**
 * Decides which identities a caller gets: the SVIDs a Workload API server
 * hands it. An empty list is a refusal (PERMISSION_DENIED). Called on every
 * call and every update of a stream, so a pod leaving the mesh loses its
 * identities at once.
 */
export type Attestor = (caller: CallerProcess) => readonly SpiffeId[] | Promise<readonly SpiffeId[]>

/** Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot. */
async function startTime(procRoot: string, pid: number): Promise<string> {
  const text = await readFile(`${procRoot}/${pid}/stat`, 'utf8')
  // The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
  return text.slice(text.lastIndexOf(')') + 2).split(' ')[19] ?? ''
}

/**
 * Reads the facts of a caller from its peer credentials: its network
 * namespace and cgroup from /proc. The process's start time is read before
 * and after: if it changed, the pid was reused by another process between
 * connect(2) and now, and nothing is vouched for.
 */
export async function readCallerProcess(credentials: PeerCredentials, procRoot = '/proc'): Promise<CallerProcess> {
  const { pid, uid, gid } = credentials
  const unknown: CallerProcess = { pid, uid, gid, netns: undefined, cgroup: undefined }
  if (pid <= 0) return unknown
  try {
    const before = await startTime(procRoot, pid)
    const [ns, cgroup] = await Promise.all([stat(`${procRoot}/${pid}/ns/net`), readFile(`${procRoot}/${pid}/cgroup`, 'utf8')])
    if ((await startTime(procRoot, pid)) !== before) return unknown
    return { pid, uid, gid, netns: { dev: ns.dev, ino: ns.ino }, cgroup }
  } catch {
    // The process is gone (or hidden): it gets nothing.
    return unknown
  }
}

/** A pod a node agent enrolled: where its network namespace is, and its identity. */
export interface EnrolledPod {
  /** A path to the pod's network namespace: `/run/netns/<name>`, `/proc/<pid>/ns/net`, a CNI's bind mount. */
  readonly netnsPath: string
  readonly identity: SpiffeId | string
}

/**
 * Attests callers by network namespace, as a node agent in Istio's in-pod
 * mode knows its pods: a caller whose network namespace is an enrolled pod's
 * gets that pod's identity; any other (the host, a pod outside the mesh, a
 * pod of another node) gets none. A pod's network namespace is its own, so a
 * process can be in it only by being in the pod (or by holding the
 * privileges to enter it, which are the node's).
 */
export function createNetnsAttestor(pods: () => Iterable<EnrolledPod>): Attestor {
  return async (caller) => {
    if (caller.netns === undefined) return []
    const found: SpiffeId[] = []
    for (const pod of pods()) {
      try {
        const ns = await stat(pod.netnsPath)
        if (ns.dev === caller.netns.dev && ns.ino === caller.netns.ino) {
          found.push(typeof pod.identity === 'string' ? SpiffeId.parse(pod.identity) : pod.identity)
        }
      } catch {
        // A pod whose namespace is gone attests no one.
      }
    }
    return found
  }
}
