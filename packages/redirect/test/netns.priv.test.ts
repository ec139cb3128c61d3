import { isAmbientError } from '@ambientkit/core'
import { spawnSync } from 'node:child_process'
import { closeSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { readlink } from 'node:fs/promises'
import { once } from 'node:events'
import { createServer, Server, Socket, type AddressInfo } from 'node:net'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { withEnv } from '../../../test/support/env'
import { describePrivileged } from '../../../test/support/privileged'
import { createTestNetwork, type TestNode, type TestPod } from '../../../test/support/netns'
import {
  getSocketMark,
  openNetns,
  originalDestination,
  PROXY_MARK,
  readSocketOptions,
  RedirectErrorCode,
  setSocketMark,
  type Netns,
} from '../src/index'

const openFds = (): number => readdirSync('/proc/self/fd').length

/** What each open descriptor of this process points to (`socket:[inode]`, `anon_inode:[pidfd]`, a path). */
const descriptors = (): string[] =>
  readdirSync('/proc/self/fd').flatMap((fd) => {
    try {
      return [readlinkSync(`/proc/self/fd/${fd}`)]
    } catch {
      return [] // closed while listing (or the directory listing's own)
    }
  })

// fs.constants has no O_CLOEXEC; this is Linux's.
const O_CLOEXEC = 0o2000000
const O_NONBLOCK = 0o4000

/** The file status flags of one of this process's descriptors, as the kernel reports them. */
const fdFlags = (fd: number): number => parseInt(/^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8)

/** This process's descriptors without close-on-exec. */
const inheritable = (): string[] =>
  readdirSync('/proc/self/fd').filter((fd) => {
    try {
      const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1]
      return flags !== undefined && (parseInt(flags, 8) & O_CLOEXEC) === 0
    } catch {
      return false
    }
  })

/** This process's children that still exist (running, or exited and not reaped). */
const children = (): string[] =>
  readdirSync('/proc').flatMap((entry) => {
    if (!/^\d+$/.test(entry)) return []
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      return Number(ppid) === process.pid ? [`${entry} ${state}`] : []
    } catch {
      return []
    }
  })

/** Resolves with the first connection the server accepts. */
const nextConnection = (server: Server): Promise<Socket> => once(server, 'connection').then(([socket]) => socket as Socket)

const closeServer = (server: Server): Promise<void> => new Promise((resolve) => server.close(() => resolve()))

async function expectCode(promise: Promise<unknown> | (() => unknown), code: string): Promise<Record<string, unknown>> {
  try {
    await (typeof promise === 'function' ? promise() : promise)
  } catch (err) {
    if (!isAmbientError(err)) throw err
    expect(err.code).toBe(code)
    return err.details as Record<string, unknown>
  }
  throw new Error(`expected ${code}, nothing was thrown`)
}

describePrivileged('netns handles and sockets inside namespaces', ['ip', 'iptables', 'ip6tables', 'ss'], () => {
  const network = createTestNetwork('ak-rdns')
  let node: TestNode
  let a: TestPod
  let b: TestPod
  let nsA: Netns
  let nsB: Netns

  beforeAll(async () => {
    node = await network.addNode()
    a = await network.addPod(node)
    b = await network.addPod(node)
    nsA = openNetns(a.name)
    nsB = openNetns(b.path)
  })
  afterAll(async () => {
    await nsA?.close()
    await nsB?.close()
    await network.cleanup()
  })

  it('opens by name, path and pid, and identifies a namespace by device and inode', async () => {
    const byPath = openNetns(`/run/netns/${a.name}`)
    expect(byPath.id).toBe(nsA.id)
    expect(nsA.path).toBe(`/run/netns/${a.name}`)
    expect(nsB.id).not.toBe(nsA.id)
    const self = openNetns(process.pid)
    expect(self.path).toBe(`/proc/${process.pid}/ns/net`)
    await using again = openNetns('/proc/self/ns/net')
    expect(self.id).toBe(again.id)
    expect(self.id).not.toBe(nsA.id)
    await byPath.close()
    await self.close()
  })

  it('is closed by await using, once', async () => {
    let held: Netns | undefined
    {
      await using ns = openNetns(`/run/netns/${a.name}`)
      held = ns
      expect(ns.runSync(() => 'inside')).toBe('inside')
    }
    expect(() => held.runSync(() => 'inside')).toThrow(expect.objectContaining({ code: 'ERR_AMBIENT_CLOSED' }))
    await held.close()
  })

  it('refuses a missing namespace, a file that is not one, and a bad name', async () => {
    const missing = await expectCode(() => openNetns(`${network.prefix}-missing`), RedirectErrorCode.Netns)
    expect(missing.path).toBe(`/run/netns/${network.prefix}-missing`)
    const notNetns = await expectCode(() => openNetns('/proc/self/ns/uts'), RedirectErrorCode.Netns)
    expect(notNetns.errnoName).toBe('EINVAL')
    await expectCode(() => openNetns('..'), 'ERR_AMBIENT_INVALID_ARGUMENT')
    await expectCode(() => openNetns(-1), 'ERR_AMBIENT_INVALID_ARGUMENT')
  })

  it('runSync runs inside the namespace and always switches back, also when the function throws', () => {
    const home = readlinkSync('/proc/thread-self/ns/net')
    const inside = nsA.runSync(() => readlinkSync('/proc/thread-self/ns/net'))
    expect(inside).not.toBe(home)
    expect(inside).toContain(nsA.id.split(':')[1]!)
    expect(readlinkSync('/proc/thread-self/ns/net')).toBe(home)
    const boom = new Error('boom')
    expect(() =>
      nsA.runSync(() => {
        throw boom
      }),
    ).toThrow(boom)
    expect(readlinkSync('/proc/thread-self/ns/net')).toBe(home)
  })

  it('exec runs a program inside the namespace, passes input, and names failures', async () => {
    const { stdout } = await nsA.exec('ip', ['-o', 'link', 'show'])
    const links = stdout.trim().split('\n').map((line) => line.split(':')[1]!.trim().split('@')[0])
    expect(links.sort()).toEqual(['eth0', 'lo'])
    expect((await nsA.exec('cat', [], { input: 'hello' })).stdout).toBe('hello')
    const failed = await expectCode(nsA.exec('sh', ['-c', 'echo nope >&2; exit 3']), RedirectErrorCode.CommandFailed)
    expect(failed.exitCode).toBe(3)
    expect(failed.stderr).toBe('nope\n')
    await expectCode(nsA.exec('ak-no-such-program'), RedirectErrorCode.ProgramMissing)
    await expect(nsA.exec('nft-missing-for-test')).rejects.toThrow(/installed and on PATH/)
    await expect(nsA.exec('/nonexistent/nft')).rejects.toThrow(/Debian package "nftables"/)
    const controller = new AbortController()
    const sleeping = nsA.exec('sleep', ['30'], { signal: controller.signal })
    controller.abort()
    await expectCode(sleeping, 'ERR_AMBIENT_ABORTED')
  })

  it('nft runs a script inside the namespace in-process, prints what the nft program prints, and names failures', async () => {
    const script = 'table inet ak_test {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    tcp dport 9 counter drop\n  }\n}\n'
    expect(await nsA.nft(script)).toBe('')
    const listed = await nsA.nft('list ruleset')
    expect(listed).toContain('tcp dport 9 counter packets 0 bytes 0 drop')
    expect(listed).toBe((await nsA.exec('nft', ['list', 'ruleset'])).stdout)
    expect(await nsB.nft('list ruleset')).toBe('')
    const failed = await expectCode(nsA.nft('add rule inet ak_test nowhere accept'), RedirectErrorCode.CommandFailed)
    expect(failed.stderr).toMatch(/No such file or directory/)
    await expectCode(nsA.nft('this is not nft'), RedirectErrorCode.CommandFailed)
    const controller = new AbortController()
    controller.abort()
    await expectCode(nsA.nft('list tables', { signal: controller.signal }), 'ERR_AMBIENT_ABORTED')
    await nsA.nft('delete table inet ak_test')
    expect(await nsA.nft('list ruleset')).toBe('')
  })

  it('nft leaves every libuv worker thread in the original namespace', async () => {
    const home = readlinkSync('/proc/thread-self/ns/net')
    // More runs than the pool has threads, in both namespaces, so every worker has entered one.
    await Promise.all(Array.from({ length: 16 }, (_, i) => (i % 2 === 0 ? nsA : nsB).nft('list tables')))
    // fs.readlink runs on a worker thread: /proc/thread-self names that worker.
    const seen = await Promise.all(Array.from({ length: 16 }, () => readlink('/proc/thread-self/ns/net')))
    expect(new Set(seen)).toEqual(new Set([home]))
  })

  it('exec starts a program with default signals, only its stdio, and the PATH of its env', async () => {
    const status = (await nsA.exec('cat', ['/proc/self/status'])).stdout
    expect(status).toMatch(/^SigBlk:\s+0+$/m)
    // Nothing ignored but signals 32 and 33, glibc's own (posix_spawn leaves those ignored by design).
    const ignored = BigInt(`0x${/^SigIgn:\s+([0-9a-f]+)$/m.exec(status)?.[1] ?? 'ffff'}`)
    expect(ignored & ~(3n << 31n)).toBe(0n)
    // Its stdio, and what this process holds without close-on-exec (inherited from whoever started it); none of ours.
    const listing = (await nsA.exec('ls', ['-l', '/proc/self/fd'])).stdout
    const inherited = [...listing.matchAll(/ (\d+) -> (.*)$/gm)].filter(([, , target]) => !/^\/proc\/\d+\/fd$/.test(target!)).map(([, fd]) => fd!)
    expect(inherited.sort()).toEqual(['0', '1', '2', ...inheritable().filter((fd) => Number(fd) > 2)].sort())
    const dir = mkdtempSync(join(tmpdir(), 'ak-exec-'))
    try {
      writeFileSync(join(dir, 'ak-hello'), '#!/bin/sh\necho "$0 in $PATH"\n', { mode: 0o755 })
      // A PATH longer than any fixed buffer, with an empty entry (the current directory) before the right one.
      const path = `${'/nonexistent'.repeat(2000)}::${dir}`
      expect((await nsA.exec('ak-hello', [], { env: { PATH: path } })).stdout).toBe(`${dir}/ak-hello in ${path}\n`)
      await expectCode(nsA.exec('ak-hello'), RedirectErrorCode.ProgramMissing)
      writeFileSync(join(dir, 'ak-not-runnable'), '', { mode: 0o644 })
      expect((await expectCode(nsA.exec('ak-not-runnable', [], { env: { PATH: dir } }), RedirectErrorCode.CommandFailed)).command).toBe('ak-not-runnable')
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('exec looks a program up in PATH without starting a process for each entry that lacks it', () => {
    // In a pid namespace of its own (unshare --pid --fork), the last pid given out there counts the processes and threads made.
    const source = `
      const { readFileSync } = require('node:fs')
      ;(async () => {
        const { openNetns } = await import(${JSON.stringify(new URL('../src/index.ts', import.meta.url).href)})
        const ns = openNetns('/proc/self/ns/net')
        const env = { PATH: [...Array.from({ length: 20 }, (_, i) => '/nonexistent/' + i), '/usr/bin', '/bin'].join(':') }
        await ns.exec('true', [], { env })
        const lastPid = () => Number(readFileSync('/proc/sys/kernel/ns_last_pid', 'utf8'))
        const before = lastPid()
        await ns.exec('true', [], { env })
        console.log(lastPid() - before)
        await ns.close()
      })()
    `
    const root = fileURLToPath(new URL('../../../', import.meta.url))
    const run = spawnSync('unshare', ['--pid', '--fork', process.execPath, '--import', 'tsx', '-e', source], {
      cwd: root,
      env: { ...process.env, TSX_TSCONFIG_PATH: join(root, 'tsconfig.json') },
      encoding: 'utf8',
      timeout: 60_000,
    })
    expect(run.status, run.stderr).toBe(0)
    // One process for the program (each of the 20 missing entries cost one more before: a whole start and exit, whose
    // copy and release of the descriptor table grow with what the process holds, four descriptors a pod in a node proxy).
    expect(Number(run.stdout)).toBe(1)
  })

  it('exec leaves no descriptor and no unreaped child behind, also when it fails or is aborted', async () => {
    const before = new Set(descriptors())
    const controller = new AbortController()
    const runs = [
      nsA.exec('true'),
      nsA.exec('cat', [], { input: 'x'.repeat(1 << 20) }),
      nsA.exec('sh', ['-c', 'exit 7']),
      nsA.exec('ak-no-such-program'),
      nsA.exec('sh', ['-c', 'kill -TERM $$']),
      nsA.exec('head', ['-c', '100000', '/dev/zero'], { maxOutput: 1000 }),
      nsA.exec('sleep', ['30'], { signal: controller.signal }),
    ]
    controller.abort()
    const settled = await Promise.allSettled(runs)
    expect(settled.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'rejected', 'rejected', 'rejected', 'rejected'])
    expect((settled[1] as PromiseFulfilledResult<{ stdout: string }>).value.stdout.length).toBe(1 << 20)
    expect((settled[4] as PromiseRejectedResult).reason.message).toMatch(/was killed by SIGTERM/)
    expect((settled[5] as PromiseRejectedResult).reason.message).toMatch(/output exceeded 1000 bytes/)
    expect(descriptors().filter((fd) => !before.has(fd))).toEqual([])
    expect(children()).toEqual([])
  })

  it('nft leaves no descriptor open: the socket whose close waits for the kernel is closed in the background', async () => {
    // By socket identity, not by count: earlier tests' sockets may still be closing in the background.
    const sockets = (): string[] => descriptors().filter((target) => target.startsWith('socket:'))
    const before = new Set(sockets())
    const added = (): string[] => sockets().filter((socket) => !before.has(socket))
    for (let i = 0; i < 10; i++) await nsA.nft('add table inet ak_fd\ndelete table inet ak_fd')
    // Nothing signals the background close; poll, boundedly.
    for (let i = 0; i < 500 && added().length > 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
    expect(added()).toEqual([])
  })

  it('nft runs the nft program when AMBIENTKIT_NFT=program', async () => {
    await withEnv({ AMBIENTKIT_NFT: 'program', PATH: '/nonexistent' }, () => expectCode(nsA.nft('list tables'), RedirectErrorCode.ProgramMissing))
    await withEnv({ AMBIENTKIT_NFT: 'program' }, async () => {
      expect(await nsA.nft('add table inet ak_program\nlist tables')).toBe('table inet ak_program\n')
      const failed = await expectCode(nsA.nft('this is not nft'), RedirectErrorCode.CommandFailed)
      expect(failed.exitCode).toBe(1)
    })
    expect(await nsA.nft('list tables')).toBe('table inet ak_program\n')
    await nsA.nft('delete table inet ak_program')
  })

  it('listen creates the listener inside the namespace with the requested options', async () => {
    const server = await nsB.listen({ host: '0.0.0.0', port: 0, mark: PROXY_MARK, reusePort: true })
    const { port } = server.address() as AddressInfo
    const { stdout } = await nsB.exec('ss', ['-Hltn', `sport = :${port}`])
    expect(stdout).toContain(`:${port}`)
    const here = await new Promise<string>((resolve) => {
      // The same port in our own namespace is free: the socket is not here.
      const probe = createServer()
      probe.once('error', () => resolve('busy'))
      probe.listen(port, '0.0.0.0', () => probe.close(() => resolve('free')))
    })
    expect(here).toBe('free')
    expect(readSocketOptions(server)).toMatchObject({ mark: PROXY_MARK, reusePort: true, transparent: false, family: 4 })

    const accepted = nextConnection(server)
    const client = await nsA.connect({ host: b.ipv4, port })
    const peer = await accepted
    expect(peer.remoteAddress).toBe(a.ipv4)
    expect(getSocketMark(peer)).toBe(PROXY_MARK) // accepted sockets inherit the listener's mark
    client.destroy()
    peer.destroy()
    await closeServer(server)
  })

  it('reusePort lets two listeners share a port, which is refused without it', async () => {
    const first = await nsB.listen({ host: '127.0.0.1', port: 0, reusePort: true })
    const { port } = first.address() as AddressInfo
    const second = await nsB.listen({ host: '127.0.0.1', port, reusePort: true })
    expect((second.address() as AddressInfo).port).toBe(port)
    const refused = await expectCode(nsB.listen({ host: '127.0.0.1', port }), RedirectErrorCode.Socket)
    expect(refused.errnoName).toBe('EADDRINUSE')
    await closeServer(first)
    await closeServer(second)
  })

  it('listen with transparent and freebind binds an address the namespace does not have', async () => {
    const refused = await expectCode(nsB.listen({ host: '10.9.9.9', port: 0 }), RedirectErrorCode.Socket)
    expect(refused.errnoName).toBe('EADDRNOTAVAIL')
    expect(refused.syscall).toBe('bind')
    const server = await nsB.listen({ host: '10.9.9.9', port: 0, transparent: true, freebind: true })
    expect(readSocketOptions(server)).toMatchObject({ transparent: true, freebind: true })
    await closeServer(server)
    const server6 = await nsB.listen({ host: 'fd00:9::9', port: 0, transparent: true, freebind: true })
    expect(readSocketOptions(server6)).toMatchObject({ transparent: true, freebind: true, family: 6 })
    await closeServer(server6)
  })

  it('connect over IPv6 creates the socket in the namespace with its mark', async () => {
    const server = await nsB.listen({ host: '::', port: 0 })
    const { port } = server.address() as AddressInfo
    const accepted = nextConnection(server)
    const client = await nsA.connect({ host: b.ipv6, port, mark: PROXY_MARK })
    expect(getSocketMark(client)).toBe(PROXY_MARK)
    const peer = await accepted
    expect(peer.remoteAddress).toBe(a.ipv6)
    client.write('ping')
    const [data] = (await once(peer, 'data')) as [Buffer]
    expect(data.toString()).toBe('ping')
    client.destroy()
    peer.destroy()
    await closeServer(server)
  })

  it('bindUdp binds a UDP socket inside the namespace whose marked datagrams pass capture that takes unmarked ones', async () => {
    const receiver = await nsB.bindUdp({ host: '0.0.0.0' })
    const { port } = receiver.address()
    const { stdout } = await b.exec('ss', ['-Huln', `sport = :${port}`])
    expect(stdout).toContain(`:${port}`)
    // In A, UDP to that port without the proxy mark is redirected to a local trap, as DNS capture does.
    const trap = await nsA.bindUdp({ host: '0.0.0.0' })
    await a.exec('nft', ['-f', '-'], {
      input: `table ip udptest { chain out { type nat hook output priority -100; udp dport ${port} meta mark != 0x539 redirect to :${trap.address().port}; }; }\n`,
    })
    try {
      const unmarked = await nsA.bindUdp()
      const marked = await nsA.bindUdp({ mark: PROXY_MARK })
      const trapped = once(trap, 'message') as Promise<[Buffer, { address: string }]>
      unmarked.send('plain', port, b.ipv4)
      expect((await trapped)[0].toString()).toBe('plain')
      const received = once(receiver, 'message') as Promise<[Buffer, { address: string }]>
      marked.send('marked', port, b.ipv4)
      const [message, from] = await received
      expect([message.toString(), from.address]).toEqual(['marked', a.ipv4])
      for (const socket of [unmarked, marked]) socket.close()
    } finally {
      await a.exec('nft', ['delete', 'table', 'ip', 'udptest'])
      trap.close()
      receiver.close()
    }
  })

  it('bindUdp binds IPv6 and fixed ports, and fails with the errno without leaking a descriptor', async () => {
    const v6 = await nsB.bindUdp({ host: '::', port: 0, ipv6Only: true })
    const received = once(v6, 'message') as Promise<[Buffer, { address: string }]>
    const sender = await nsA.bindUdp({ host: '::', mark: PROXY_MARK })
    sender.send('six', v6.address().port, b.ipv6)
    const [message, from] = await received
    expect([message.toString(), from.address]).toEqual(['six', a.ipv6])
    sender.close()

    const before = openFds()
    const taken = await expectCode(nsB.bindUdp({ host: '::', port: v6.address().port, ipv6Only: true }), RedirectErrorCode.Socket)
    expect([taken.errnoName, taken.syscall]).toEqual(['EADDRINUSE', 'bind'])
    await expectCode(() => nsB.bindUdp({ host: 'example.com' }), 'ERR_AMBIENT_INVALID_ADDRESS')
    await expectCode(() => nsB.bindUdpFd({ port: 70000 }), 'ERR_AMBIENT_INVALID_ARGUMENT')
    await expectCode(() => nsB.bindUdpFd({ mark: -1 }), 'ERR_AMBIENT_INVALID_ARGUMENT')
    await expectCode(nsB.bindUdp({ signal: AbortSignal.abort() }), 'ERR_AMBIENT_ABORTED')
    expect(openFds()).toBe(before)
    v6.close()
  })

  it('bindUdpFd gives a bound, non-blocking descriptor inside the namespace, with its mark', () => {
    const fd = nsB.bindUdpFd({ host: '127.0.0.1', mark: PROXY_MARK })
    try {
      expect(fdFlags(fd) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC)
      expect(readSocketOptions(fd)).toMatchObject({ mark: PROXY_MARK, family: 4 })
    } finally {
      closeSync(fd)
    }
  })

  it('connect fails with the errno and leaks no descriptor', async () => {
    const before = openFds()
    const refused = await expectCode(nsA.connect({ host: b.ipv4, port: 9 }), RedirectErrorCode.Connect)
    expect(refused.errnoName).toBe('ECONNREFUSED')
    expect(openFds()).toBe(before)
  })

  it('connect is cancelled by its signal without leaking the socket', async () => {
    await b.exec('iptables', ['-A', 'INPUT', '-p', 'tcp', '--dport', '7', '-j', 'DROP'])
    try {
      const before = openFds()
      const controller = new AbortController()
      const pending = nsA.connect({ host: b.ipv4, port: 7, signal: controller.signal })
      // The SYN is dropped, so only the signal can end this connect.
      const { stdout } = await a.exec('ss', ['-Htn', 'state', 'syn-sent'])
      expect(stdout).toContain(`${b.ipv4}:7`)
      controller.abort()
      await expectCode(pending, 'ERR_AMBIENT_ABORTED')
      expect(openFds()).toBe(before)
      await expectCode(nsA.connect({ host: b.ipv4, port: 7, signal: AbortSignal.abort() }), 'ERR_AMBIENT_ABORTED')
    } finally {
      await b.exec('iptables', ['-D', 'INPUT', '-p', 'tcp', '--dport', '7', '-j', 'DROP'])
    }
  })

  it('listenFd gives a listening, non-blocking descriptor inside the namespace, with its mark, and refuses bad options', async () => {
    const fd = nsB.listenFd({ host: '0.0.0.0', port: 0, mark: PROXY_MARK })
    try {
      expect(fdFlags(fd) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC)
      expect(getSocketMark(fd)).toBe(PROXY_MARK)
      // Listening inside B: B's own ss lists it, by the descriptor's port.
      const server = new Server()
      server.listen({ fd })
      await once(server, 'listening')
      const { port } = server.address() as AddressInfo
      const { stdout } = await b.exec('ss', ['-Htln', `sport = :${port}`])
      expect(stdout).toContain(`:${port}`)
      const accepted = nextConnection(server)
      const client = await nsA.connect({ host: b.ipv4, port })
      expect((await accepted).remoteAddress).toBe(a.ipv4)
      client.destroy()
      await closeServer(server)
    } catch (err) {
      closeSync(fd)
      throw err
    }
    expect(() => nsB.listenFd({ host: 'not-an-ip', port: 1 })).toThrow(/listen host/)
    expect(() => nsB.listenFd({ port: 70000 })).toThrow(/listen port/)
  })

  it('connectFd resolves with a connected, non-blocking descriptor the caller owns, unread by Node', async () => {
    const server = await nsB.listen({ host: '0.0.0.0', port: 0 })
    const { port } = server.address() as AddressInfo
    try {
      const accepted = nextConnection(server)
      const fd = await nsA.connectFd({ host: b.ipv4, port, mark: PROXY_MARK })
      expect(fdFlags(fd) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC)
      expect(getSocketMark(fd)).toBe(PROXY_MARK)
      const peer = await accepted
      expect(peer.remoteAddress).toBe(a.ipv4)
      // The peer speaks first: its bytes wait in the kernel for whoever reads the descriptor.
      await new Promise<void>((resolve) => peer.write('server first', () => resolve()))
      const client = new Socket({ fd, readable: true, writable: true })
      const [greeting] = (await once(client, 'data')) as [Buffer]
      expect(greeting.toString()).toBe('server first')
      client.write('ping')
      const [data] = (await once(peer, 'data')) as [Buffer]
      expect(data.toString()).toBe('ping')
      client.destroy()
      peer.destroy()
    } finally {
      await closeServer(server)
    }
  })

  it('connectFd fails with the errno, is cancelled by its signal, and leaks no descriptor', async () => {
    const before = openFds()
    const refused = await expectCode(nsA.connectFd({ host: b.ipv4, port: 9 }), RedirectErrorCode.Connect)
    expect(refused.errnoName).toBe('ECONNREFUSED')
    await expectCode(nsA.connectFd({ host: b.ipv4, port: 80, mark: -1 }), 'ERR_AMBIENT_INVALID_ARGUMENT')
    await b.exec('iptables', ['-A', 'INPUT', '-p', 'tcp', '--dport', '7', '-j', 'DROP'])
    try {
      const controller = new AbortController()
      const pending = nsA.connectFd({ host: b.ipv4, port: 7, signal: controller.signal })
      // The SYN is dropped, so only the signal can end this connect.
      const { stdout } = await a.exec('ss', ['-Htn', 'state', 'syn-sent'])
      expect(stdout).toContain(`${b.ipv4}:7`)
      controller.abort()
      await expectCode(pending, 'ERR_AMBIENT_ABORTED')
      await expectCode(nsA.connectFd({ host: b.ipv4, port: 7, signal: AbortSignal.abort() }), 'ERR_AMBIENT_ABORTED')
    } finally {
      await b.exec('iptables', ['-D', 'INPUT', '-p', 'tcp', '--dport', '7', '-j', 'DROP'])
    }
    expect(openFds()).toBe(before)
  })

  it('connect with transparent binds a foreign source address (source preservation)', async () => {
    const foreign = '10.200.1.99'
    // Replies to the foreign address must come back to pod A and be delivered locally there.
    await node.exec('ip', ['route', 'add', `${foreign}/32`, 'via', a.ipv4])
    await a.exec('ip', ['rule', 'add', 'to', foreign, 'lookup', '100'])
    await a.exec('ip', ['route', 'add', 'local', 'default', 'dev', 'lo', 'table', '100'])
    const server = await nsB.listen({ port: 0 })
    try {
      const { port } = server.address() as AddressInfo
      const refused = await expectCode(nsA.connect({ host: b.ipv4, port, localAddress: foreign }), RedirectErrorCode.Connect)
      expect(refused.errnoName).toBe('EADDRNOTAVAIL')
      const accepted = nextConnection(server)
      const client = await nsA.connect({ host: b.ipv4, port, localAddress: foreign, transparent: true })
      const peer = await accepted
      expect(peer.remoteAddress).toBe(foreign)
      expect(readSocketOptions(client).transparent).toBe(true)
      client.destroy()
      peer.destroy()
    } finally {
      await closeServer(server)
      await node.exec('ip', ['route', 'del', `${foreign}/32`])
      await a.exec('ip', ['rule', 'del', 'to', foreign, 'lookup', '100'])
    }
  })

  it('refuses bad socket options before touching the kernel', async () => {
    await expectCode(nsA.connect({ host: 'example.com', port: 80 }), 'ERR_AMBIENT_INVALID_ADDRESS')
    await expectCode(nsA.connect({ host: b.ipv4, port: 0 }), 'ERR_AMBIENT_INVALID_ARGUMENT')
    await expectCode(nsA.connect({ host: b.ipv4, port: 80, mark: -1 }), 'ERR_AMBIENT_INVALID_ARGUMENT')
    await expectCode(nsA.connect({ host: b.ipv4, port: 80, localAddress: a.ipv6 }), 'ERR_AMBIENT_INVALID_ARGUMENT')
    await expectCode(nsA.listen({ port: 65536 }), 'ERR_AMBIENT_INVALID_ARGUMENT')
    await expectCode(nsA.listen({ port: 0, backlog: 0 }), 'ERR_AMBIENT_INVALID_ARGUMENT')
  })

  it('originalDestination recovers the pre-REDIRECT destination, IPv4 and IPv6', async () => {
    const v4 = await nsA.listen({ host: '127.0.0.1', port: 0 })
    const v6 = await nsA.listen({ host: '::1', port: 0 })
    const dual = await nsA.listen({ host: '::', port: 0, ipv6Only: false })
    const rules: Array<[string, string[]]> = [
      ['iptables', ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', b.ipv4, '--dport', '8080', '-j', 'REDIRECT', '--to-ports', String((v4.address() as AddressInfo).port)]],
      ['ip6tables', ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', b.ipv6, '--dport', '8443', '-j', 'REDIRECT', '--to-ports', String((v6.address() as AddressInfo).port)]],
      ['iptables', ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', b.ipv4, '--dport', '9090', '-j', 'REDIRECT', '--to-ports', String((dual.address() as AddressInfo).port)]],
    ]
    for (const [command, args] of rules) await a.exec(command, args)
    try {
      for (const [server, host, port] of [
        [v4, b.ipv4, 8080],
        [v6, b.ipv6, 8443],
        [dual, b.ipv4, 9090],
      ] as const) {
        const accepted = nextConnection(server)
        const client = await nsA.connect({ host, port })
        const peer = await accepted
        expect(originalDestination(peer)).toEqual({ address: host, port, family: host.includes(':') ? 6 : 4 })
        client.destroy()
        peer.destroy()
      }
    } finally {
      await a.exec('iptables', ['-t', 'nat', '-F', 'OUTPUT'])
      await a.exec('ip6tables', ['-t', 'nat', '-F', 'OUTPUT'])
      await Promise.all([closeServer(v4), closeServer(v6), closeServer(dual)])
    }
  })

  it('originalDestination fails clearly on a connection without conntrack state', async () => {
    const bare = await network.addNamespace('bare')
    const ns = openNetns(bare.name)
    const server = await ns.listen({ host: '127.0.0.1', port: 0 })
    const accepted = nextConnection(server)
    const client = await ns.connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port })
    const peer = await accepted
    const details = await expectCode(() => originalDestination(peer), RedirectErrorCode.OriginalDestination)
    expect(details.errnoName).toBe('ENOENT')
    client.destroy()
    peer.destroy()
    await closeServer(server)
    await ns.close()
  })

  it('reads and sets SO_MARK on an existing socket', async () => {
    const server = await nsA.listen({ host: '127.0.0.1', port: 0 })
    expect(getSocketMark(server)).toBe(0)
    setSocketMark(server, 0x111)
    expect(getSocketMark(server)).toBe(0x111)
    expect(() => setSocketMark(server, 2 ** 32)).toThrow(/mark/)
    await closeServer(server)
    await expectCode(() => getSocketMark(server), RedirectErrorCode.SocketOption)
  })

  it('a closed handle refuses work and closes idempotently', async () => {
    const handle = openNetns(a.name)
    await handle.close()
    await handle.close()
    await expectCode(() => handle.runSync(() => 1), 'ERR_AMBIENT_CLOSED')
    await expectCode(handle.listen({ port: 0 }), 'ERR_AMBIENT_CLOSED')
    await expectCode(() => handle.nft('list tables'), 'ERR_AMBIENT_CLOSED')
  })
})
