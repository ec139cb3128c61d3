import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'

/**
 * Child processes of the bench: every one is tracked so that a failure or a
 * Ctrl-C ends them all (by pid, never by name) before the namespaces they
 * live in are deleted.
 */

const TSX = ['--import', 'tsx']
const live = new Set<ChildProcess>()

/** Node's arguments to run a TypeScript file of the bench (tsx resolves `@ambientkit/*` to the sources). */
export function tsArgs(file: string, nodeFlags: readonly string[] = []): string[] {
  return [...nodeFlags, ...TSX, file]
}

/** Spawns `command` inside network namespace `ns` (`ip netns exec` execs in place: the pid is the program's). */
export function spawnIn(ns: string | undefined, command: string, args: readonly string[]): ChildProcess {
  const child =
    ns === undefined
      ? spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] })
      : spawn('ip', ['netns', 'exec', ns, command, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
  live.add(child)
  child.once('exit', () => live.delete(child))
  // Keep the last lines of stderr: they explain a child that died.
  const tail: string[] = []
  child.stderr?.setEncoding('utf8').on('data', (text: string) => {
    tail.push(text)
    if (tail.length > 20) tail.shift()
  })
  ;(child as ChildProcess & { stderrTail: () => string }).stderrTail = () => tail.join('').trim()
  return child
}

/** The recent stderr of a child spawned by {@link spawnIn}. */
export function stderrOf(child: ChildProcess): string {
  return (child as ChildProcess & { stderrTail?: () => string }).stderrTail?.() ?? ''
}

/** One port a relay pair forwards: the client side accepts on `127.0.0.1:local` in its pod, the server side on `tunnel` and connects to `127.0.0.1:target`. */
export interface RelayService {
  name: string
  local: number
  tunnel: number
  target: number
}

/** A long-running program of the bench (stunnel, HAProxy): `pid` is the process whose CPU and memory are read. */
export interface RelayProcess {
  readonly pid: number
  readonly child: ChildProcess
}

/**
 * Starts `command` in `ns` and resolves once `ready`, given all it printed
 * on stderr so far, returns the pid to measure (until then `undefined`).
 * Rejects when it exits first or after 10 s, with what it printed.
 */
export function startRelay(ns: string, command: string, args: readonly string[], ready: (log: string, child: ChildProcess) => number | undefined): Promise<RelayProcess> {
  const child = spawnIn(ns, command, args)
  child.stdin?.end()
  return new Promise((resolve, reject) => {
    let log = ''
    const timer = setTimeout(() => reject(new Error(`${command} in ${ns} did not start within 10 s: ${log}`)), 10_000)
    const onData = (text: string): void => {
      log += text
      const pid = ready(log, child)
      if (pid === undefined) return
      clearTimeout(timer)
      child.stderr?.off('data', onData)
      resolve({ pid, child })
    }
    child.stderr?.on('data', onData)
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`${command} in ${ns} exited (${code}): ${stderrOf(child) || log}`))
    })
  })
}

/** Ends a child: SIGTERM, then SIGKILL after `graceMs`. Resolves when it exited. */
export async function stop(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

/** Ends every child still running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((child) => stop(child)))
}

/** Runs a program to completion and returns its stdout; rejects with its stderr on failure or after `timeoutMs`. */
export async function runIn(ns: string | undefined, command: string, args: readonly string[], timeoutMs = 60_000): Promise<string> {
  const child = spawnIn(ns, command, args)
  child.stdin?.end()
  let stdout = ''
  child.stdout?.setEncoding('utf8').on('data', (text: string) => (stdout += text))
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null]
  clearTimeout(timer)
  if (code !== 0) throw new Error(`${command} ${args.join(' ')} in ${ns ?? 'host'} failed (${signal ?? code}): ${stderrOf(child) || stdout.slice(-500)}`)
  return stdout
}

/**
 * A long-lived child that takes one JSON command per stdin line and answers
 * each with one JSON line on stdout, in order (the pod agents and the node
 * proxy runners).
 */
export interface Agent {
  readonly pid: number
  readonly child: ChildProcess
  request<T = Record<string, unknown>>(command: Record<string, unknown>, timeoutMs?: number): Promise<T>
  close(): Promise<void>
}

/** Starts an agent and waits for its first line (`{"ready":true,...}`). */
export async function startAgent(ns: string | undefined, command: string, args: readonly string[], timeoutMs = 30_000): Promise<{ agent: Agent; hello: Record<string, unknown> }> {
  const child = spawnIn(ns, command, args)
  const lines = createInterface({ input: child.stdout! })
  const waiting: Array<{ resolve: (line: string) => void; reject: (err: Error) => void }> = []
  const died = (): Error => new Error(`${args.find((a) => a.endsWith('.ts')) ?? command} in ${ns ?? 'host'} exited: ${stderrOf(child)}`)
  lines.on('line', (line) => waiting.shift()?.resolve(line))
  child.once('exit', () => {
    for (const waiter of waiting.splice(0)) waiter.reject(died())
  })
  const next = (ms: number): Promise<string> =>
    new Promise((resolve, reject) => {
      if (child.exitCode !== null || child.signalCode !== null) return reject(died())
      const timer = setTimeout(() => {
        const index = waiting.indexOf(entry)
        if (index >= 0) waiting.splice(index, 1)
        reject(new Error(`no answer from ${command} in ${ns ?? 'host'} within ${ms} ms: ${stderrOf(child)}`))
      }, ms)
      const entry = {
        resolve: (line: string) => {
          clearTimeout(timer)
          resolve(line)
        },
        reject: (err: Error) => {
          clearTimeout(timer)
          reject(err)
        },
      }
      waiting.push(entry)
    })
  const parse = (line: string): Record<string, unknown> => {
    const value = JSON.parse(line) as Record<string, unknown>
    if (typeof value.error === 'string') throw new Error(`${command} in ${ns ?? 'host'}: ${value.error}`)
    return value
  }
  const hello = parse(await next(timeoutMs))
  const agent: Agent = {
    pid: child.pid!,
    child,
    async request<T>(cmd: Record<string, unknown>, ms = 120_000): Promise<T> {
      const answer = next(ms)
      child.stdin!.write(`${JSON.stringify(cmd)}\n`)
      return parse(await answer) as T
    },
    async close() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit')
        child.stdin!.end()
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
        await exited
        clearTimeout(timer)
      }
      lines.close()
    },
  }
  return { agent, hello }
}
