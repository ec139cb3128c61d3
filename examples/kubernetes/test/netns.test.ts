import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { isAmbientError } from '@ambientkit/core'
import { createProcNetnsResolver, podUidFromCgroup } from '../src/index'

// cgroup lines as the kubelet's drivers and container runtimes write them
// (cgroups(7): "hierarchy-ID:controller-list:cgroup-path").
const SYSTEMD_V2 =
  '0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f6c2b1a_8e4d_4c7b_9a15_0d2e6f8b1c47.slice/cri-containerd-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope\n'
const SYSTEMD_V2_CGROUPNS = '0::/../../kubepods-besteffort-podf6a9c3e1_5d7b_4f20_8c94_a1e7d3b5f068.slice/cri-containerd-b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2.scope\n'
const CGROUPFS_V1 = [
  '12:pids:/kubepods/besteffort/pod71b0c9e2-4d3a-4f6e-8b21-5a7c0e9d3f68/aff34703e5e1f89443e9a1bffcc80f43f74d4808a2dd22c8f88c08547b323934',
  '11:memory:/kubepods/besteffort/pod71b0c9e2-4d3a-4f6e-8b21-5a7c0e9d3f68/aff34703e5e1f89443e9a1bffcc80f43f74d4808a2dd22c8f88c08547b323934',
  '1:name=systemd:/kubepods/besteffort/pod71b0c9e2-4d3a-4f6e-8b21-5a7c0e9d3f68/aff34703e5e1f89443e9a1bffcc80f43f74d4808a2dd22c8f88c08547b323934',
  '0::/',
].join('\n')

describe('podUidFromCgroup', () => {
  it('reads the systemd driver, where the UUID dashes are underscores', () => {
    expect(podUidFromCgroup(SYSTEMD_V2)).toBe('3f6c2b1a-8e4d-4c7b-9a15-0d2e6f8b1c47')
  })

  it('reads a path made relative by a cgroup namespace', () => {
    expect(podUidFromCgroup(SYSTEMD_V2_CGROUPNS)).toBe('f6a9c3e1-5d7b-4f20-8c94-a1e7d3b5f068')
  })

  it('reads the cgroupfs driver on cgroup v1 (many lines)', () => {
    expect(podUidFromCgroup(CGROUPFS_V1)).toBe('71b0c9e2-4d3a-4f6e-8b21-5a7c0e9d3f68')
  })

  it('reads a container runtime nested in docker (kind nodes)', () => {
    expect(
      podUidFromCgroup(
        '0::/system.slice/docker-8445c3ca20fac1d8e74854d84a7e6a57297ffb22809098b2816b31a428f2b777.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod863b91d4_4b68_4efa_917f_4b560e3e86aa.slice/cri-containerd-75c7fe7ad0df679971e755bd97b84dd68a32e1eba8e8f99b01ab3c07196a3e4a.scope',
      ),
    ).toBe('863b91d4-4b68-4efa-917f-4b560e3e86aa')
  })

  it('finds no pod in a host process, a malformed file, or lines naming two pods', () => {
    expect(podUidFromCgroup('0::/system.slice/kubelet.service\n')).toBeUndefined()
    expect(podUidFromCgroup('0::/init.scope\n')).toBeUndefined()
    expect(podUidFromCgroup('garbage')).toBeUndefined()
    expect(podUidFromCgroup(`${SYSTEMD_V2}1:name=systemd:/kubepods/pod71b0c9e2-4d3a-4f6e-8b21-5a7c0e9d3f68/abc\n`)).toBeUndefined()
  })
})

/**
 * A /proc tree as a host-PID container sees it: numeric process folders
 * with `cgroup`, `stat` and `ns/net` (a symlink to one file per network
 * namespace, so processes sharing a namespace share its inode, as with
 * nsfs), plus folders that are not processes.
 */
describe('createProcNetnsResolver on a fixture /proc', () => {
  let root: string
  let proc: string

  const API = '3f6c2b1a-8e4d-4c7b-9a15-0d2e6f8b1c47'
  const BATCH = 'f6a9c3e1-5d7b-4f20-8c94-a1e7d3b5f068'
  const WEB = '71b0c9e2-4d3a-4f6e-8b21-5a7c0e9d3f68'
  const HOSTNET = 'e4a8f2c6-1b9d-4e7a-b3c5-d0f6a8e2c194'

  function processDir(pid: number, { cgroup, netns, start, comm = 'app' }: { cgroup?: string; netns?: string; start: number; comm?: string }): void {
    const dir = join(proc, String(pid))
    mkdirSync(join(dir, 'ns'), { recursive: true })
    if (cgroup !== undefined) writeFileSync(join(dir, 'cgroup'), cgroup)
    // proc(5) stat: pid (comm) state ppid ... starttime is field 22.
    const fields = ['S', '1', String(pid), String(pid), '0', '-1', '4194560', '150', '0', '0', '0', '2', '1', '0', '0', '20', '0', '1', '0', String(start), '1234567', '89']
    writeFileSync(join(dir, 'stat'), `${pid} (${comm}) ${fields.join(' ')}\n`)
    if (netns !== undefined) symlinkSync(join(root, 'nsfs', netns), join(dir, 'ns', 'net'))
  }

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'ak-k8s-proc-'))
    proc = join(root, 'proc')
    mkdirSync(join(root, 'nsfs'), { recursive: true })
    for (const ns of ['net-4026531840', 'net-4026532410', 'net-4026532488', 'net-4026532555']) writeFileSync(join(root, 'nsfs', ns), '')
    processDir(1, { cgroup: '0::/init.scope\n', netns: 'net-4026531840', start: 1, comm: 'systemd' })
    processDir(812, { cgroup: '0::/system.slice/kubelet.service\n', netns: 'net-4026531840', start: 900, comm: 'kubelet' })
    // The api pod: its pause process, then the app, which started later.
    processDir(2301, { cgroup: SYSTEMD_V2.replace('9bca8d63', '1111aaaa'), netns: 'net-4026532410', start: 51_000, comm: 'pause' })
    processDir(2377, { cgroup: SYSTEMD_V2, netns: 'net-4026532410', start: 51_420, comm: 'node server.js' })
    // The app listed before its pause process must not win either.
    processDir(2299, { cgroup: SYSTEMD_V2, netns: 'net-4026532410', start: 51_500, comm: 'sh (wrapper)' })
    processDir(3104, { cgroup: SYSTEMD_V2_CGROUPNS, netns: 'net-4026532488', start: 60_000, comm: 'pause' })
    processDir(3300, { cgroup: CGROUPFS_V1, netns: 'net-4026532555', start: 61_000, comm: 'pause' })
    // A host-network pod's processes are in the pod's cgroup but the node's netns.
    processDir(4000, { cgroup: `0::/kubepods.slice/kubepods-pod${HOSTNET.replace(/-/g, '_')}.slice/cri-containerd-aa.scope\n`, netns: 'net-4026531840', start: 70_000 })
    // A process that exited between readdir and reading its files.
    processDir(4100, { start: 71_000 })
    // Not processes.
    mkdirSync(join(proc, 'sys'))
    writeFileSync(join(proc, 'uptime'), '1234.5 2345.6\n')
    symlinkSync(join(proc, '2377'), join(proc, 'self'))
  })

  afterAll(() => {
    rmSync(root, { recursive: true, force: true })
  })

  it('answers /proc/<pid>/ns/net of the oldest process of each wanted pod', async () => {
    const resolver = createProcNetnsResolver({ procRoot: proc })
    const found = await resolver.resolve([API, BATCH, WEB])
    expect(Object.fromEntries(found)).toEqual({
      [API]: join(proc, '2301', 'ns', 'net'),
      [BATCH]: join(proc, '3104', 'ns', 'net'),
      [WEB]: join(proc, '3300', 'ns', 'net'),
    })
  })

  it('only answers for the pods asked about', async () => {
    const found = await createProcNetnsResolver({ procRoot: proc }).resolve([BATCH])
    expect([...found.keys()]).toEqual([BATCH])
  })

  it('never answers the node namespace, even for a pod whose cgroup matches', async () => {
    const found = await createProcNetnsResolver({ procRoot: proc }).resolve([HOSTNET])
    expect(found.size).toBe(0)
  })

  it('leaves out pods it cannot find yet', async () => {
    const found = await createProcNetnsResolver({ procRoot: proc }).resolve(['00000000-0000-4000-8000-000000000000', API])
    expect([...found.keys()]).toEqual([API])
  })

  it('takes the host namespace from the option when given', async () => {
    const resolver = createProcNetnsResolver({ procRoot: proc, hostNetnsPath: join(root, 'nsfs', 'net-4026532410') })
    const found = await resolver.resolve([API, BATCH])
    expect([...found.keys()]).toEqual([BATCH])
  })

  it('refuses to guess when the node namespace cannot be read, naming the option', async () => {
    const resolver = createProcNetnsResolver({ procRoot: proc, hostNetnsPath: join(root, 'nsfs', 'missing') })
    const error = await resolver.resolve([API]).catch((err: unknown) => err)
    expect(isAmbientError(error, 'ERR_AMBIENT_INVALID_ARGUMENT')).toBe(true)
    expect((error as Error).message).toMatch(/^hostNetnsPath: expected the node's network namespace.*missing.*ENOENT/)
  })

  it('rejects with ERR_AMBIENT_ABORTED when aborted', async () => {
    const controller = new AbortController()
    controller.abort(new Error('shutting down'))
    const error = await createProcNetnsResolver({ procRoot: proc }).resolve([API], { signal: controller.signal }).catch((err: unknown) => err)
    expect(isAmbientError(error, 'ERR_AMBIENT_ABORTED')).toBe(true)
  })
})

describe('createProcNetnsResolver on this machine', () => {
  it('scans the real /proc without error and finds no pod here', async () => {
    // PID 1 may belong to a sandbox we cannot inspect; our own namespace stands in for the node's.
    const found = await createProcNetnsResolver({ hostNetnsPath: '/proc/self/ns/net' }).resolve(['3f6c2b1a-8e4d-4c7b-9a15-0d2e6f8b1c47'])
    expect(found.size).toBe(0)
  })
})
