import { readdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { AmbientError, CoreErrorCode, throwIfAborted, type AbortOptions } from '@ambientkit/core'

/** Finds the network namespaces of pods on this node. */
export interface NetnsResolver {
  /**
   * Looks for the network namespace of each pod UID; the result maps the
   * UIDs it found to a path that opens that namespace. A pod that is missing
   * (its sandbox is not up yet, or it is already gone) is simply absent.
   */
  resolve(podUids: Iterable<string>, options?: AbortOptions): Promise<Map<string, string>>
}

/** Options of {@link createProcNetnsResolver}. */
export interface ProcNetnsResolverOptions {
  /**
   * Where the host's procfs is. Default `/proc`, which shows every process
   * of the node when the agent's pod has `hostPID: true`.
   */
  procRoot?: string
  /**
   * The node's own network namespace, which is never returned for a pod
   * (host-network pods live there). Default `<procRoot>/1/ns/net`: PID 1 is
   * the node's init under `hostPID`. A lookup rejects with
   * `ERR_AMBIENT_INVALID_ARGUMENT` when it cannot be read.
   */
  hostNetnsPath?: string
  /** How many processes are inspected at once. Default 64. */
  concurrency?: number
}

// A pod UID as the kubelet writes it into cgroup names: `pod<uuid>` after a
// `/` (cgroupfs driver) or `-` (systemd driver, where the UUID's dashes become
// underscores because `-` separates systemd slice levels), followed by the
// end of that path segment.
const POD_CGROUP = /[/-]pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?:\/|$)/i

/**
 * The pod UID in the contents of a `/proc/<pid>/cgroup` file, or `undefined`
 * when the process is not in a pod's cgroup (or its lines name different
 * pods). Understands the cgroupfs and systemd drivers, cgroup v1 (many lines)
 * and v2 (`0::<path>`), and the relative paths (`/../..`) a process sees
 * from inside a cgroup namespace.
 */
export function podUidFromCgroup(content: string): string | undefined {
  let found: string | undefined
  for (const line of content.split('\n')) {
    // "hierarchy-ID:controller-list:cgroup-path" (cgroups(7)); the path may contain ':'.
    const parts = line.split(':')
    if (parts.length < 3) continue
    const match = POD_CGROUP.exec(parts.slice(2).join(':'))
    if (match === null) continue
    const uid = match[1]!.replace(/_/g, '-').toLowerCase()
    if (found !== undefined && found !== uid) return undefined
    found = uid
  }
  return found
}

/**
 * The process start time, in clock ticks since boot: field 22 of
 * `/proc/<pid>/stat` (proc(5)). Counted after the last `)` because the
 * command name in field 2 may itself contain spaces and parentheses.
 */
function startTime(statLine: string): bigint | undefined {
  const fields = statLine.slice(statLine.lastIndexOf(')') + 2).split(' ')
  const value = fields[19]
  return value !== undefined && /^\d+$/.test(value) ? BigInt(value) : undefined
}

async function readIfPresent(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8')
  } catch {
    // Processes exit while we scan, and some are not ours to read: either way
    // there is nothing to learn from them.
    return undefined
  }
}

/**
 * A {@link NetnsResolver} for a node agent running in a host-PID DaemonSet
 * pod: it scans `/proc/<pid>/cgroup` for the pod UID the kubelet puts in
 * cgroup names, and answers `/proc/<pid>/ns/net` of the oldest process of
 * that pod (the sandbox's pause process, which holds the namespace for the
 * pod's whole life), skipping processes that share the node's namespace.
 *
 * The path stays valid only while that process lives: open it promptly,
 * an open descriptor keeps the namespace alive.
 */
export function createProcNetnsResolver(options: ProcNetnsResolverOptions = {}): NetnsResolver {
  const procRoot = options.procRoot ?? '/proc'
  const hostNetnsPath = options.hostNetnsPath ?? join(procRoot, '1', 'ns', 'net')
  const concurrency = options.concurrency ?? 64
  return {
    async resolve(podUids, { signal } = {}) {
      const wanted = new Set([...podUids].map((uid) => uid.toLowerCase()))
      const found = new Map<string, string>()
      if (wanted.size === 0) return found
      throwIfAborted(signal, 'netns lookup')
      const host = await stat(hostNetnsPath).catch((err: unknown) => {
        // Without the node's namespace to compare with, a host-network
        // process could be taken for a pod: refuse rather than guess.
        throw new AmbientError(
          CoreErrorCode.InvalidArgument,
          `hostNetnsPath: expected the node's network namespace, readable (hostPID: true, CAP_SYS_PTRACE), got ${JSON.stringify(hostNetnsPath)}: ${(err as Error).message}`,
          { cause: err, details: { name: 'hostNetnsPath', value: hostNetnsPath } },
        )
      })
      const pids = (await readdir(procRoot)).filter((name) => /^\d+$/.test(name))
      const oldest = new Map<string, { pid: string; start: bigint }>()
      const inspect = async (pid: string): Promise<void> => {
        const cgroup = await readIfPresent(join(procRoot, pid, 'cgroup'))
        const uid = cgroup === undefined ? undefined : podUidFromCgroup(cgroup)
        if (uid === undefined || !wanted.has(uid)) return
        const netns = await stat(join(procRoot, pid, 'ns', 'net')).catch(() => undefined)
        if (netns === undefined) return
        if (netns.dev === host.dev && netns.ino === host.ino) return
        const statLine = await readIfPresent(join(procRoot, pid, 'stat'))
        const start = statLine === undefined ? undefined : startTime(statLine)
        if (start === undefined) return
        const previous = oldest.get(uid)
        if (previous === undefined || start < previous.start || (start === previous.start && Number(pid) < Number(previous.pid))) {
          oldest.set(uid, { pid, start })
        }
      }
      for (let i = 0; i < pids.length; i += concurrency) {
        throwIfAborted(signal, 'netns lookup')
        await Promise.all(pids.slice(i, i + concurrency).map(inspect))
      }
      for (const [uid, { pid }] of oldest) found.set(uid, join(procRoot, pid, 'ns', 'net'))
      return found
    },
  }
}
