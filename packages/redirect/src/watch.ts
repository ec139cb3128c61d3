import { AmbientError, invalidArgument } from '@ambientkit/core'
import { RedirectErrorCode } from './errors'
import type { Netns } from './netns'
import { loadNetlink } from './routing'

// linux/netlink.h and linux/netfilter/nfnetlink.h: nf_tables announces every
// change of a namespace's ruleset (tables, chains, rules, sets, and the
// generation that commits them) to this group of that namespace.
const NETLINK_NETFILTER = 12
const NFNLGRP_NFTABLES = 7

/** A watch on a namespace's nf_tables ruleset: see {@link watchRuleset}. */
export interface RulesetWatch {
  /** Stops watching and closes its socket. Idempotent. */
  close(): void
}

/**
 * Calls `onChange` whenever the nf_tables ruleset of `netns` changes, by
 * anyone: `nft`, `iptables` (the nf_tables-backed one, Debian's and most
 * distributions' default) or a program speaking netlink. One netlink socket
 * in the namespace, no process; reading a ruleset (`nft list`,
 * `inspectCapture`) is no change. Changes made with the legacy (x_tables)
 * `iptables` are not announced: a caller that must see those checks on a
 * timer too. `onChange` is also called when the kernel dropped
 * announcements (a burst overflowed the socket): something changed.
 * It gets no details, and a burst calls it many times: debounce it.
 *
 * Throws `ERR_AMBIENT_REDIRECT_NETLINK` when the socket cannot be opened in
 * the namespace.
 *
 * @example
 * ```ts
 * import { inspectCapture, openNetns, watchRuleset } from '@ambientkit/redirect'
 *
 * const pod = openNetns('pod-a')
 * const watch = watchRuleset(pod, () => {
 *   void inspectCapture(pod).then((inspection) => console.log('capture is', inspection.status))
 * })
 * // later
 * watch.close()
 * ```
 */
export function watchRuleset(netns: Netns, onChange: () => void): RulesetWatch {
  if (typeof onChange !== 'function') throw invalidArgument('watchRuleset onChange', onChange, 'a function')
  const { createNetlink } = loadNetlink()
  let socket: ReturnType<typeof createNetlink> | undefined
  try {
    // Created while the thread is inside the namespace: it stays bound there.
    socket = netns.runSync(() => createNetlink(NETLINK_NETFILTER))
    socket.addMembership(NFNLGRP_NFTABLES)
  } catch (err) {
    socket?.close()
    const message = err instanceof Error ? err.message : String(err)
    throw new AmbientError(RedirectErrorCode.Netlink, `cannot watch the nf_tables ruleset in ${netns.path}: ${message}`, { cause: err, details: { path: netns.path } })
  }
  // A watch never keeps a process alive on its own.
  socket.unref()
  const changed = (): void => onChange()
  socket.on('message', changed)
  socket.on('truncatedMessage', changed)
  socket.on('invalid', changed)
  socket.on('error', changed)
  let closed = false
  return {
    close() {
      if (closed) return
      closed = true
      socket.close()
    },
  }
}
