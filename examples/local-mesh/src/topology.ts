import { execFile } from 'node:child_process'
import type { NodeConfig, PodConfig } from './config'
import { netnsName, PREFIX } from './paths'

/** Runs a program (in `cwd`, default ours); rejects with its stderr on a non-zero exit. */
export function run(command: string, args: readonly string[], input?: string, cwd?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(command, args, { maxBuffer: 16 * 1024 * 1024, ...(cwd ? { cwd } : {}) }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${command} ${args.join(' ')}: ${stderr.trim() || err.message}`, { cause: err }))
      else resolve(stdout)
    })
    child.stdin?.on('error', () => undefined)
    child.stdin?.end(input ?? '')
  })
}

/** Runs `ip` commands, one a line, in one process inside namespace `ns`. */
function ipBatch(ns: string, lines: readonly string[]): Promise<string> {
  return run('ip', ['-n', ns, '-batch', '-'], `${lines.join('\n')}\n`)
}

async function addNamespace(name: string): Promise<void> {
  await run('ip', ['netns', 'add', name])
  await ipBatch(name, ['link set lo up'])
}

/**
 * Creates a node: a namespace that forwards, with a bridge `br0` holding the
 * pod subnet's gateway. The bridge gets a MAC address of its own: left to
 * the kernel, a bridge takes the lowest MAC of its ports, so a pod joining
 * with a lower one would change the gateway's MAC under every other pod,
 * whose ARP entries then send to the old one for seconds (segments and
 * their retransmissions lost until the entries go stale).
 */
export async function createNode(node: NodeConfig): Promise<void> {
  const ns = netnsName.node(node.name)
  await addNamespace(ns)
  await run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'])
  await ipBatch(ns, [`link add br0 address ${gatewayMac(node)} type bridge`, `address add ${node.gateway}/24 dev br0`, 'link set br0 up'])
}

/** The gateway bridge's MAC: locally administered (02:00), then the gateway's IPv4 address. */
export function gatewayMac(node: NodeConfig): string {
  const octets = node.gateway.split('.').map((o) => Number(o).toString(16).padStart(2, '0'))
  return ['02', '00', ...octets].join(':')
}

/** The interface in node `from` that leads to node `to`. */
export const linkInterface = (to: NodeConfig): string => `to${to.index}`

/**
 * Links two nodes with a veth pair, a /30 of 10.44.255.0/24 per pair, and a
 * route in each to the other's pod subnet: the "network between the nodes"
 * that the demo captures packets on.
 */
export async function linkNodes(a: NodeConfig, b: NodeConfig): Promise<void> {
  const [low, high] = a.index < b.index ? [a, b] : [b, a]
  // One /30 per pair of nodes, numbered 1, 2, 3... over the pairs (at most 36 for 9 nodes).
  const base = 4 * (((high.index - 1) * (high.index - 2)) / 2 + low.index)
  const address = (n: NodeConfig): string => `10.44.255.${base + (n === low ? 1 : 2)}`
  const nsLow = netnsName.node(low.name)
  const nsHigh = netnsName.node(high.name)
  await ipBatch(nsLow, [`link add ${linkInterface(high)} type veth peer name ${linkInterface(low)} netns ${nsHigh}`])
  const side = (self: NodeConfig, other: NodeConfig): string[] => [
    `address add ${address(self)}/30 dev ${linkInterface(other)}`,
    `link set ${linkInterface(other)} up`,
    `route add ${other.podCidr} via ${address(other)}`,
  ]
  await ipBatch(nsLow, side(low, high))
  await ipBatch(nsHigh, side(high, low))
}

/** Creates a pod: a namespace with `eth0` into its node's bridge and a default route via the node. */
export async function createPod(pod: PodConfig, node: NodeConfig): Promise<void> {
  const ns = netnsName.pod(pod)
  const host = Number(pod.ip.split('.')[3])
  await addNamespace(ns)
  const nodeNs = netnsName.node(node.name)
  await ipBatch(nodeNs, [`link add v${host} type veth peer name eth0 netns ${ns}`, `link set v${host} master br0`, `link set v${host} up`])
  await ipBatch(ns, [`address add ${pod.ip}/24 dev eth0`, 'link set eth0 up', `route add default via ${node.gateway}`])
}

/** Names of the namespaces this demo made (by prefix), found even after a crash. */
export async function demoNamespaces(): Promise<string[]> {
  const out = await run('ip', ['netns', 'list'])
  return out
    .split('\n')
    .map((line) => line.split(' ')[0]!)
    .filter((name) => name.startsWith(`${PREFIX}-`))
}

/** Process ids living in a namespace (`ip netns pids`). */
export async function namespacePids(name: string): Promise<number[]> {
  try {
    const out = await run('ip', ['netns', 'pids', name])
    return out.split('\n').filter(Boolean).map(Number)
  } catch {
    return []
  }
}

/** Deletes a namespace; its veths go with it. */
export async function deleteNamespace(name: string): Promise<void> {
  try {
    await run('ip', ['netns', 'del', name])
  } catch (err) {
    if (!String((err as Error).message).includes('No such file')) throw err
  }
}
