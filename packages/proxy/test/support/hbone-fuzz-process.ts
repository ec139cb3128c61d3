import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readdirSync } from 'node:fs'
import { createInterface, type Interface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { HboneDataPath } from '@ambientkit/proxy'
import type { TestMesh } from '../interop/support'
import type { FuzzTarget } from './h2-fuzz'

/** What the server process reports of itself. */
export interface ServerStats {
  readonly connections: number
  readonly sessions: number
  readonly tunnels: number
  readonly rss: number
  readonly echoSockets: number
}

/** An HBONE server in a child process (hbone-fuzz-server.ts): a crash is an exit, not the runner's death. */
export interface ServerProcess {
  readonly target: FuzzTarget
  readonly pid: number
  /** Open descriptors of the server process, from /proc. */
  fds(): number
  stats(): Promise<ServerStats>
  /** What the server's decide() saw since the last call (headers, baggage, traceparent, forwardedFor, destination). */
  requests(): Promise<Array<Record<string, unknown>>>
  /** False once the process has exited. */
  alive(): boolean
  /** Throws (with the server's stderr) if the process has exited. */
  assertAlive(): void
  /** Resolves when the process exits, with its code or signal. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  readonly stderr: () => string
  stop(): Promise<void>
}

export async function startServerProcess(mesh: TestMesh, dataPath: HboneDataPath, serverId: string, maxStreams: number): Promise<ServerProcess> {
  const saved = mesh.ca.save()
  const child: ChildProcess = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', fileURLToPath(new URL('./hbone-fuzz-server.ts', import.meta.url))], {
    cwd: fileURLToPath(new URL('../../../..', import.meta.url)),
    env: {
      ...process.env,
      AK_CA_CERT: saved.certificateChainPem,
      AK_CA_KEY: saved.privateKeyPem,
      AK_SERVER_ID: serverId,
      AK_DATA_PATH: dataPath,
      AK_MAX_STREAMS: String(maxStreams),
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  // Writing to a process that just died fails with EPIPE: the exit is reported by `exited`.
  child.stdin!.on('error', () => {})
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20_000)))
  const lines: Interface = createInterface({ input: child.stdout! })
  const pending: Array<(line: string) => void> = []
  const early: string[] = []
  lines.on('line', (line) => {
    const waiter = pending.shift()
    if (waiter === undefined) early.push(line)
    else waiter(line)
  })
  const nextLine = (): Promise<string> =>
    Promise.race([
      early.length > 0 ? Promise.resolve(early.shift()!) : new Promise<string>((resolve) => pending.push(resolve)),
      exited.then(({ code, signal }) => {
        throw new Error(`the HBONE server process exited (${code ?? signal}): ${stderr}`)
      }),
    ])
  const ready = JSON.parse(await nextLine()) as { port: number; echoPort: number; stallPort: number }
  const assertAlive = (): void => {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`the HBONE server process (${dataPath} data path) died (${child.exitCode ?? child.signalCode}):\n${stderr}`)
    }
  }
  return {
    target: { ...ready, maxStreams },
    pid: child.pid!,
    fds: () => readdirSync(`/proc/${child.pid}/fd`).length,
    stats: async () => {
      assertAlive()
      child.stdin!.write('stats\n')
      return JSON.parse(await nextLine()) as ServerStats
    },
    requests: async () => {
      assertAlive()
      child.stdin!.write('requests\n')
      return JSON.parse(await nextLine()) as Array<Record<string, unknown>>
    },
    alive: () => child.exitCode === null && child.signalCode === null,
    assertAlive,
    exited,
    stderr: () => stderr,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.stdin!.end()
        await Promise.race([exited, once(child, 'exit')])
      }
      lines.close()
    },
  }
}
