import { execFile, execFileSync } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'

/**
 * Throw-away network topologies for privileged tests: "nodes" (router
 * namespaces with a bridge, forwarding on) and "pods" (namespaces with an
 * `eth0` veth into their node's bridge, IPv4 and IPv6 addresses, default
 * routes via the node). Nodes are wired to each other with veth links and
 * routes, so pods on different nodes reach each other.
 *
 * Addressing (fixed per network; namespaces isolate one test file's network
 * from another's):
 * - node i (1-based): pod subnet 10.200.i.0/24 and fd00:200:i::/64, bridge
 *   `br0` with .1 / ::1;
 * - pod k on node i: 10.200.i.(k+1) and fd00:200:i::(k+1) (k from 1);
 * - the link between nodes i and j: 10.254.l.i and 10.254.l.j, fd00:254:l::i/j.
 *
 * IPv6 addresses are `nodad` and DAD is off in every namespace, so addresses
 * are usable at once. Everything created is deleted by `cleanup()`, which is
 * idempotent and safe in `afterAll` / `finally` even after a failed setup.
 *
 * @example
 * ```ts
 * const network = createTestNetwork('ak-rd')
 * afterAll(() => network.cleanup())
 * const node = await network.addNode()
 * const [a, b] = [await network.addPod(node), await network.addPod(node)]
 * await a.exec('ping', ['-c1', '-W1', b.ipv4])
 * ```
 */

/** What a program printed. */
export interface ExecOutput {
  stdout: string
  stderr: string
}

/** A namespace the network created. */
export interface TestNamespace {
  /** Name as `ip netns` knows it. */
  readonly name: string
  /** `/run/netns/<name>`: give it to `openNetns`. */
  readonly path: string
  /** Runs a program inside the namespace (`nsenter --net`); rejects on a non-zero exit with its stderr. */
  exec(command: string, args?: readonly string[], options?: { input?: string }): Promise<ExecOutput>
}

/** A router namespace with a bridge for its pods. */
export interface TestNode extends TestNamespace {
  /** 1-based position of the node in its network. */
  readonly index: number
  /** The bridge's (gateway's) addresses. */
  readonly ipv4: string
  readonly ipv6: string
  /** Pod subnets, e.g. `10.200.1.0/24` and `fd00:200:1::/64`. */
  readonly podCidrV4: string
  readonly podCidrV6: string
  /** Pods created on this node so far. */
  readonly pods: readonly TestPod[]
}

/** A workload namespace with `eth0` into its node's bridge. */
export interface TestPod extends TestNamespace {
  readonly node: TestNode
  readonly ipv4: string
  readonly ipv6: string
}

/** A set of namespaces that is deleted as a whole. */
export interface TestNetwork {
  /** The unique prefix of every namespace name in this network. */
  readonly prefix: string
  /** A bare namespace with `lo` up. */
  addNamespace(label?: string): Promise<TestNamespace>
  /** A new node, linked to every node made before it. */
  addNode(): Promise<TestNode>
  /** A new pod on `node`. */
  addPod(node: TestNode): Promise<TestPod>
  /** Deletes every namespace this network created (and with them their links). Idempotent. */
  cleanup(): Promise<void>
}

let networkCount = 0

function run(command: string, args: readonly string[], input?: string): Promise<ExecOutput> {
  return new Promise((resolve, reject) => {
    const child = execFile(command, args, { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null) {
        reject(new Error(`${command} ${args.join(' ')} failed: ${stderr.trim() || err.message}`, { cause: err }))
      } else {
        resolve({ stdout, stderr })
      }
    })
    child.stdin?.on('error', () => undefined)
    child.stdin?.end(input ?? '')
  })
}

/** Runs `ip` commands, one per line, in one process inside namespace `ns`. */
function ipBatch(ns: string, lines: readonly string[]): Promise<ExecOutput> {
  return run('ip', ['-n', ns, '-batch', '-'], `${lines.join('\n')}\n`)
}

/**
 * Deletes the namespaces an earlier run of a test left behind (its process
 * was killed, or a hook timed out before its cleanup): those named
 * `<prefix>-<pid>-` whose process is gone. Namespaces of a live process,
 * another test file running now, are left alone.
 */
function removeOrphans(prefix: string): void {
  if (!existsSync('/run/netns')) return
  for (const name of readdirSync('/run/netns')) {
    const pid = name.startsWith(`${prefix}-`) ? /^(\d+)-/.exec(name.slice(prefix.length + 1))?.[1] : undefined
    if (pid === undefined || Number(pid) === process.pid || existsSync(`/proc/${pid}`)) continue
    try {
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' })
    } catch {
      // Gone meanwhile, or busy: the next run tries again.
    }
  }
}

/**
 * A new, empty test network. `prefix` should name the test file (short:
 * interface names are not involved, but `ip netns list` output is read by
 * people); the pid and a counter are appended so parallel files never collide.
 */
export function createTestNetwork(prefix: string): TestNetwork {
  removeOrphans(prefix)
  networkCount += 1
  const base = `${prefix}-${process.pid}-${networkCount}`
  const created: string[] = []
  const nodes: Array<TestNode & { pods: TestPod[] }> = []
  let count = 0
  let links = 0

  const namespace = async (label: string): Promise<TestNamespace> => {
    count += 1
    const name = `${base}-${label}${count}`
    await run('ip', ['netns', 'add', name])
    created.push(name)
    // nsenter enters only the network namespace: unlike `ip netns exec` it
    // remounts nothing, which keeps many parallel test files from racing on mounts.
    const exec = (command: string, args: readonly string[] = [], options: { input?: string } = {}): Promise<ExecOutput> =>
      run('nsenter', [`--net=/run/netns/${name}`, command, ...args], options.input)
    await exec('sysctl', ['-qw', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0'])
    await ipBatch(name, ['link set lo up'])
    return { name, path: `/run/netns/${name}`, exec }
  }

  return {
    prefix: base,
    addNamespace: (label = 'ns') => namespace(label),

    async addNode() {
      const ns = await namespace('node')
      const index = nodes.length + 1
      const node = {
        ...ns,
        index,
        ipv4: `10.200.${index}.1`,
        ipv6: `fd00:200:${index}::1`,
        podCidrV4: `10.200.${index}.0/24`,
        podCidrV6: `fd00:200:${index}::/64`,
        pods: [] as TestPod[],
      }
      await ns.exec('sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'])
      await ipBatch(ns.name, [
        'link add br0 type bridge',
        `address add ${node.ipv4}/24 dev br0`,
        `address add ${node.ipv6}/64 dev br0 nodad`,
        'link set br0 up',
      ])
      for (const peer of nodes) {
        links += 1
        const l = links
        await ipBatch(ns.name, [`link add to${peer.index} type veth peer name to${index} netns ${peer.name}`])
        const side = (self: TestNode, other: TestNode): string[] => [
          `address add 10.254.${l}.${self.index}/24 dev to${other.index}`,
          `address add fd00:254:${l}::${self.index}/64 dev to${other.index} nodad`,
          `link set to${other.index} up`,
          `route add ${other.podCidrV4} via 10.254.${l}.${other.index}`,
          `route add ${other.podCidrV6} via fd00:254:${l}::${other.index}`,
        ]
        await ipBatch(ns.name, side(node, peer))
        await ipBatch(peer.name, side(peer, node))
      }
      nodes.push(node)
      return node
    },

    async addPod(node) {
      const owner = nodes.find((candidate) => candidate.name === node.name)
      if (owner === undefined) throw new Error(`addPod: ${node.name} is not a node of this network`)
      const ns = await namespace('pod')
      const host = owner.pods.length + 2
      const pod: TestPod = { ...ns, node: owner, ipv4: `10.200.${owner.index}.${host}`, ipv6: `fd00:200:${owner.index}::${host}` }
      await ipBatch(owner.name, [
        `link add p${host} type veth peer name eth0 netns ${ns.name}`,
        `link set p${host} master br0`,
        `link set p${host} up`,
      ])
      await ipBatch(ns.name, [
        `address add ${pod.ipv4}/24 dev eth0`,
        `address add ${pod.ipv6}/64 dev eth0 nodad`,
        'link set eth0 up',
        `route add default via ${owner.ipv4}`,
        `route add default via ${owner.ipv6}`,
      ])
      owner.pods.push(pod)
      return pod
    },

    async cleanup() {
      const names = created.splice(0).reverse()
      const failures: string[] = []
      for (const name of names) {
        try {
          await run('ip', ['netns', 'del', name])
        } catch (err) {
          if (!String((err as Error).message).includes('No such file')) failures.push((err as Error).message)
        }
      }
      if (failures.length > 0) throw new Error(`cleanup left namespaces behind: ${failures.join('; ')}`)
    },
  }
}
