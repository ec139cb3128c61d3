import type * as Netlink from 'netlink'
import type { RtNetlinkSocket } from 'netlink'
import { AmbientError } from '@ambientkit/core'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { RedirectErrorCode } from './errors'
import type { Netns } from './netns'
import type { CaptureFamily, CaptureRoutingSpec as CaptureRouting } from './rules'

const AF: Record<CaptureFamily, number> = { ipv4: 2, ipv6: 10 }
// The loopback device is ifindex 1 in every network namespace.
const LOOPBACK_INDEX = 1
// NLM_F_CREATE: the package sends requests without it, and the kernel then refuses to make a new table.
const CREATE = { flags: 0x400 }

/** What of the routing part of capture is in a namespace. */
export interface RoutingState {
  /** Per family: how many `fwmark mark/mask lookup table` rules exist. */
  rules: Record<CaptureFamily, number>
  /** Per family: whether table `table` has the local default route via lo. */
  routes: Record<CaptureFamily, boolean>
}

function routingError(what: string, err: unknown, netns: Netns): AmbientError {
  const message = err instanceof Error ? err.message : String(err)
  const hint = message.includes('ENETDOWN') ? ' (the namespace\'s loopback interface is down: "ip link set lo up" there first)' : ''
  return new AmbientError(RedirectErrorCode.Netlink, `${what} in ${netns.path}: ${message}${hint}`, { cause: err, details: { path: netns.path } })
}

let netlink: typeof Netlink | undefined

/**
 * The netlink package, loaded on first use rather than at import: it loads a
 * native addon of its own, through `__dirname`, which an ESM bundle of a
 * program importing this package does not have, and which a program that
 * only renders rules never needs. A runtime `require`, not `import()`, so
 * that bundlers leave it to Node to resolve.
 */
export function loadNetlink(): typeof Netlink {
  netlink ??= createRequire(import.meta.url)('netlink') as typeof Netlink
  return netlink
}

/**
 * Runs `fn` with an rtnetlink socket bound to `netns` (created while the
 * thread is inside it, so it stays there) and always closes it.
 */
export async function withRtNetlink<T>(netns: Netns, fn: (rt: RtNetlinkSocket) => Promise<T>): Promise<T> {
  const { createRtNetlink } = loadNetlink()
  const rt = netns.runSync(() => createRtNetlink())
  try {
    return await fn(rt)
  } finally {
    rt.socket.close()
  }
}

const tableOf = (data: { table?: number }, attrs: { table?: number }): number | undefined => attrs.table ?? data.table

async function ourRules(rt: RtNetlinkSocket, family: CaptureFamily, routing: CaptureRouting) {
  const rules = await rt.getRules({ family: AF[family] })
  return rules.filter(
    (r) =>
      r.data.action === 'toTbl' &&
      tableOf(r.data, r.attrs) === routing.table &&
      r.attrs.fwmark === routing.mark &&
      r.attrs.fwmask === routing.mask,
  )
}

async function ourRoutes(rt: RtNetlinkSocket, family: CaptureFamily, routing: CaptureRouting) {
  const routes = await rt.getRoutes({ family: AF[family] })
  return routes.filter(
    (r) => tableOf(r.data, r.attrs) === routing.table && r.data.type === 'LOCAL' && r.data.dstLen === 0 && r.attrs.oif === LOOPBACK_INDEX,
  )
}

/** Reads the routing part of capture in `netns` (for every family, whatever the config says). */
export async function readRouting(netns: Netns, routing: CaptureRouting): Promise<RoutingState> {
  try {
    return await withRtNetlink(netns, async (rt) => {
      const state: RoutingState = { rules: { ipv4: 0, ipv6: 0 }, routes: { ipv4: false, ipv6: false } }
      for (const family of ['ipv4', 'ipv6'] as const) {
        state.rules[family] = (await ourRules(rt, family, routing)).length
        state.routes[family] = (await ourRoutes(rt, family, routing)).length > 0
      }
      return state
    })
  } catch (err) {
    throw routingError('cannot read ip rules and routes', err, netns)
  }
}

// The kernel checks this one, not conf/all: it refuses an IPv6 route whose device has IPv6 disabled.
const LOOPBACK_IPV6_SYSCTL = 'net.ipv6.conf.lo.disable_ipv6'

/**
 * Refuses IPv6 routing in a namespace whose `lo` has IPv6 disabled, before
 * anything is changed. The kernel would refuse the IPv6 local route there
 * with a bare EACCES (its reason, "IPv6 is disabled on nexthop device", is
 * lost on the way), after the rules and the IPv4 routing went in.
 *
 * @throws `ERR_AMBIENT_REDIRECT_IPV6_DISABLED`
 */
export function checkIpv6Routing(netns: Netns, routing: CaptureRouting): void {
  if (!routing.families.includes('ipv6')) return
  const value = netns.runSync(() => {
    try {
      // /proc/sys/net shows the namespace of the thread reading it: this one, here.
      return readFileSync('/proc/sys/net/ipv6/conf/lo/disable_ipv6', 'utf8').trim()
    } catch {
      // Unreadable (no /proc here): ensureRouting still reports what the kernel refuses.
      return undefined
    }
  })
  if (value !== '1') return
  throw new AmbientError(
    RedirectErrorCode.Ipv6Disabled,
    `cannot capture IPv6 in ${netns.path}: IPv6 is disabled in that namespace (${LOOPBACK_IPV6_SYSCTL} = 1), and capture routes IPv6 replies through lo; ` +
      'pass { ipv6: false } in the capture config to capture IPv4 only there, or enable IPv6 in the namespace. Nothing was changed',
    { details: { path: netns.path, sysctl: LOOPBACK_IPV6_SYSCTL, value } },
  )
}

/** What {@link ensureRouting} added, per family, for {@link undoRouting}. */
export interface RoutingAdded {
  rules: CaptureFamily[]
  routes: CaptureFamily[]
}

/** Adds what is missing of the ip rule and local route, removes duplicate rules; idempotent. */
export async function ensureRouting(netns: Netns, routing: CaptureRouting): Promise<RoutingAdded> {
  const added: RoutingAdded = { rules: [], routes: [] }
  try {
    await withRtNetlink(netns, async (rt) => {
      for (const family of routing.families) {
        const rules = await ourRules(rt, family, routing)
        for (const extra of rules.slice(1)) await rt.delRule(extra.data, extra.attrs)
        if (rules.length === 0) {
          await rt.newRule(
            { family: AF[family], action: 'toTbl', table: routing.table < 256 ? routing.table : 0 },
            { fwmark: routing.mark, fwmask: routing.mask, table: routing.table, priority: routing.priority },
            CREATE,
          )
          added.rules.push(family)
        }
        if ((await ourRoutes(rt, family, routing)).length === 0) {
          await rt.newRoute(
            { family: AF[family], dstLen: 0, table: routing.table < 256 ? routing.table : 0, type: 'LOCAL', scope: 'HOST', protocol: 'BOOT' },
            { oif: LOOPBACK_INDEX, table: routing.table },
            CREATE,
          )
          added.routes.push(family)
        }
      }
    })
  } catch (err) {
    throw routingError('cannot install the ip rule and local route of capture', err, netns)
  }
  return added
}

/** Removes what one {@link ensureRouting} added (and only that), for an apply whose rules failed. */
export async function undoRouting(netns: Netns, routing: CaptureRouting, added: RoutingAdded): Promise<void> {
  if (added.rules.length === 0 && added.routes.length === 0) return
  try {
    await withRtNetlink(netns, async (rt) => {
      for (const family of added.rules) for (const rule of await ourRules(rt, family, routing)) await rt.delRule(rule.data, rule.attrs)
      for (const family of added.routes) {
        for (const route of await ourRoutes(rt, family, routing)) await rt.delRoute(route.data, { oif: route.attrs.oif, table: route.attrs.table })
      }
    })
  } catch (err) {
    throw routingError('cannot take back the ip rule and local route of a failed capture', err, netns)
  }
}

/** Removes our ip rules and local routes in every family; idempotent. Returns whether anything was there. */
export async function removeRouting(netns: Netns, routing: CaptureRouting): Promise<boolean> {
  try {
    return await withRtNetlink(netns, async (rt) => {
      let removed = false
      for (const family of ['ipv4', 'ipv6'] as const) {
        for (const rule of await ourRules(rt, family, routing)) {
          await rt.delRule(rule.data, rule.attrs)
          removed = true
        }
        for (const route of await ourRoutes(rt, family, routing)) {
          await rt.delRoute(route.data, { oif: route.attrs.oif, table: route.attrs.table })
          removed = true
        }
      }
      return removed
    })
  } catch (err) {
    throw routingError('cannot remove the ip rule and local route of capture', err, netns)
  }
}
