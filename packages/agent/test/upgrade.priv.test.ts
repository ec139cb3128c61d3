import { spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import type { Server, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { PodEnrollment } from '@ambientkit/core'
import { createCertificateAuthority } from '@ambientkit/identity'
import { openNetns, type Netns } from '@ambientkit/redirect'
import { createTestNetwork, type TestNetwork, type TestNode, type TestPod } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { startEchoApp } from '../../proxy/test/support/apps'
import { meshWorkload } from '../../proxy/test/support/mesh'

const ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const AGENT = fileURLToPath(new URL('./support/upgrade-agent.ts', import.meta.url))
const STREAMS = 50
const CHUNK = 16 * 1024

/** One agent process of the test, started inside the node's namespace. */
interface AgentProcess {
  readonly child: ChildProcess
  /** The JSON lines it printed, in order. */
  readonly lines: AsyncIterator<string>
  readonly exited: Promise<number | null>
}

describePrivileged('node agent upgrade: a new process takes over the listeners while traffic flows', ['ip', 'nft'], () => {
  let network: TestNetwork
  let node: TestNode
  let client: TestPod
  let server: TestPod
  let clientNs: Netns
  let serverNs: Netns
  let app: Server
  let dir: string
  let configFile: string
  const started: AgentProcess[] = []

  beforeAll(async () => {
    network = createTestNetwork('ak-upgrade')
    node = await network.addNode()
    client = await network.addPod(node)
    server = await network.addPod(node)
    dir = mkdtempSync(join(tmpdir(), 'ak-upgrade-'))
    const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
    const pods: PodEnrollment[] = [
      { workload: meshWorkload(client, { name: 'client', namespace: 'shop', serviceAccount: 'client' }), netnsPath: client.path },
      { workload: meshWorkload(server, { name: 'server', namespace: 'shop', serviceAccount: 'server' }), netnsPath: server.path },
    ]
    configFile = join(dir, 'agent.json')
    writeFileSync(configFile, JSON.stringify({ ca: ca.save(), pods, drainMs: 60_000 }))
    clientNs = openNetns(client.path)
    serverNs = openNetns(server.path)
    app = await startEchoApp(serverNs, 8080)
  })
  afterAll(async () => {
    for (const agent of started) agent.child.kill('SIGKILL')
    await Promise.all(started.map((agent) => agent.exited))
    app?.close()
    await clientNs?.close()
    await serverNs?.close()
    await network?.cleanup()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  async function startAgent(): Promise<AgentProcess> {
    const child = spawn('ip', ['netns', 'exec', node.name, process.execPath, '--import', 'tsx', AGENT, configFile], {
      cwd: ROOT,
      env: { ...process.env, TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json') },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
    const agent = { child, lines: createInterface({ input: child.stdout! })[Symbol.asyncIterator](), exited }
    started.push(agent)
    const first = await agent.lines.next()
    expect(first.done).toBe(false)
    expect(JSON.parse(first.value as string)).toMatchObject({ ready: true, failed: [] })
    return agent
  }

  /** Sends `payload` and reads as many bytes back; the sha256 of what came back. */
  function echoed(socket: Socket, expected: number): Promise<string> {
    const hash = createHash('sha256')
    let received = 0
    return new Promise((resolve, reject) => {
      socket.on('data', (data: Buffer) => {
        hash.update(data)
        received += data.length
        if (received === expected) resolve(hash.digest('hex'))
        if (received > expected) reject(new Error(`${received} bytes back, ${expected} sent`))
      })
      socket.once('error', reject)
      socket.once('close', () => reject(new Error(`closed after ${received} of ${expected} bytes`)))
    })
  }

  /** A connection that streams chunks, each after the previous one came back, until `stop` resolves. */
  async function stream(stop: Promise<void>): Promise<{ sent: string; received: string; chunks: number }> {
    const socket = await clientNs.connect({ host: server.ipv4, port: 8080 })
    const sent = createHash('sha256')
    const received = createHash('sha256')
    let stopped = false
    void stop.then(() => (stopped = true))
    let outstanding = 0
    let chunks = 0
    return new Promise((resolve, reject) => {
      const next = (): void => {
        // Bounded: about a minute of chunks at most, whatever happens.
        if (stopped || chunks >= 20_000) {
          socket.destroy()
          resolve({ sent: sent.digest('hex'), received: received.digest('hex'), chunks })
          return
        }
        const chunk = randomBytes(CHUNK)
        sent.update(chunk)
        outstanding = CHUNK
        chunks += 1
        socket.write(chunk)
      }
      socket.on('data', (data: Buffer) => {
        received.update(data)
        outstanding -= data.length
        if (outstanding === 0) next()
        else if (outstanding < 0) reject(new Error(`more bytes back than sent on chunk ${chunks}`))
      })
      socket.once('error', reject)
      socket.once('close', () => reject(new Error(`closed during chunk ${chunks}`)))
      next()
    })
  }

  it('50 streaming connections and a steady stream of new ones: none fails, every checksum matches, the old process drains and exits', async () => {
    const old = await startAgent()
    let stopStreams!: () => void
    const streamsStop = new Promise<void>((resolve) => (stopStreams = resolve))
    const streams = Array.from({ length: STREAMS }, () => stream(streamsStop))

    // New connections at a steady rate, each an exchange with a checksum, until stopped.
    const arrivals: Array<Promise<boolean>> = []
    let onArrival: (() => void) | undefined
    const arrive = async (): Promise<boolean> => {
      const payload = randomBytes(CHUNK)
      const socket = await clientNs.connect({ host: server.ipv4, port: 8080 })
      try {
        const back = echoed(socket, payload.length)
        socket.write(payload)
        return (await back) === createHash('sha256').update(payload).digest('hex')
      } finally {
        socket.destroy()
        onArrival?.()
      }
    }
    const timer = setInterval(() => {
      const arrival = arrive()
      // Judged at the end, all together: not an unhandled rejection meanwhile.
      arrival.catch(() => {})
      arrivals.push(arrival)
    }, 20)
    /** Resolves once `count` more arrivals have completed. */
    const arrivalsDone = (count: number): Promise<void> =>
      new Promise((resolve) => {
        let left = count
        onArrival = () => {
          left -= 1
          if (left === 0) resolve()
        }
      })
    try {
      await arrivalsDone(10)
      const next = await startAgent()
      await arrivalsDone(10)
      old.child.kill('SIGTERM')
      // The old process has stopped accepting: new connections go to the new one only, the streams still flow on the old one.
      await arrivalsDone(25)
      stopStreams()
      const results = await Promise.allSettled(streams)
      expect(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason))).toEqual([])
      for (const r of results as Array<PromiseFulfilledResult<{ sent: string; received: string; chunks: number }>>) {
        expect(r.value.received).toBe(r.value.sent)
        expect(r.value.chunks).toBeGreaterThan(0)
      }
      // With its connections finished, the old process's drain ends and it exits.
      expect(await old.exited).toBe(0)
      await arrivalsDone(10)
      expect(next.child.exitCode).toBeNull()
    } finally {
      clearInterval(timer)
      stopStreams()
      await Promise.allSettled(streams)
    }
    const outcomes = await Promise.allSettled(arrivals)
    expect(outcomes.filter((o) => o.status === 'rejected').map((o) => String((o as PromiseRejectedResult).reason))).toEqual([])
    expect(outcomes.every((o) => o.status === 'fulfilled' && o.value)).toBe(true)
    expect(outcomes.length).toBeGreaterThan(50)
  })
})
