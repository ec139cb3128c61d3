import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, rmdirSync, statSync, writeFileSync } from 'node:fs'
import { once } from 'node:events'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { describePrivileged } from '../../../test/support/privileged'
import { createProcNetnsResolver } from '../src/index'

// Real processes in real network namespaces, placed in cgroups named the way
// the kubelet's cgroupfs driver names them, found through the real /proc.
describePrivileged('createProcNetnsResolver on real cgroups and network namespaces', ['unshare', 'nsenter'], () => {
  const POD = '5a2d8e6f-3c9b-4a17-8e40-b6c1d9f7a3e5'
  const HOST_POD = 'e4a8f2c6-1b9d-4e7a-b3c5-d0f6a8e2c194'
  const children: ChildProcess[] = []
  const created: string[] = []
  let root = ''
  let pause: ChildProcess
  let app: ChildProcess

  // A hierarchy we may create groups in: a cgroup v1 controller or the v2 tree.
  function cgroupRoot(): string {
    for (const candidate of ['/sys/fs/cgroup/pids', '/sys/fs/cgroup/unified', '/sys/fs/cgroup']) {
      const dir = join(candidate, `ak-k8s-${process.pid}`)
      try {
        mkdirSync(dir)
        created.push(dir)
        return dir
      } catch {
        // not writable or not a cgroup hierarchy: try the next
      }
    }
    throw new Error('no writable cgroup hierarchy under /sys/fs/cgroup')
  }

  function group(...parts: string[]): string {
    let dir = root
    for (const part of parts) {
      dir = join(dir, part)
      if (existsSync(dir)) continue
      mkdirSync(dir)
      created.push(dir)
    }
    return dir
  }

  // Starts `argv`, waits until it has entered its namespaces (it prints a line), then moves it into `cgroup`.
  async function startIn(cgroup: string, argv: string[]): Promise<ChildProcess> {
    const child = spawn(argv[0]!, [...argv.slice(1), 'sh', '-c', 'echo ready; exec sleep 60'], { stdio: ['ignore', 'pipe', 'inherit'] })
    children.push(child)
    await once(child.stdout!, 'data')
    writeFileSync(join(cgroup, 'cgroup.procs'), String(child.pid))
    return child
  }

  beforeAll(async () => {
    root = cgroupRoot()
    const pauseGroup = group('kubepods', 'besteffort', `pod${POD}`, 'f1e2d3c4b5a69788')
    const appGroup = group('kubepods', 'besteffort', `pod${POD}`, 'a9b8c7d6e5f40312')
    const hostGroup = group(`pod${HOST_POD}`, '0011223344556677')
    pause = await startIn(pauseGroup, ['unshare', '--net'])
    app = await startIn(appGroup, ['nsenter', `--net=/proc/${pause.pid}/ns/net`])
    await startIn(hostGroup, ['nsenter', `--net=/proc/self/ns/net`])
  })

  afterAll(async () => {
    await Promise.all(
      children.map(async (child) => {
        if (child.exitCode === null && child.signalCode === null) {
          const exited = once(child, 'exit')
          child.kill('SIGKILL')
          await exited
        }
      }),
    )
    for (const dir of created.reverse()) {
      try {
        rmdirSync(dir)
      } catch {
        // already gone with its parent
      }
    }
  })

  it('answers the namespace of the pod’s oldest process, which its other processes share', async () => {
    const resolver = createProcNetnsResolver({ hostNetnsPath: '/proc/self/ns/net' })
    const found = await resolver.resolve([POD, HOST_POD])
    expect(Object.fromEntries(found)).toEqual({ [POD]: `/proc/${pause.pid}/ns/net` })
    const netns = statSync(found.get(POD)!)
    expect(netns.ino).toBe(statSync(`/proc/${app.pid}/ns/net`).ino)
    expect(netns.ino).not.toBe(statSync('/proc/self/ns/net').ino)
  })
})
