import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import type { Readable } from 'node:stream'
import { EXAMPLE_DIR, ROOT_DIR, STATE_DIR, state } from './paths'

/** A background process the demo started, recorded in a pid file so `--down` finds it after a crash. */
export interface DemoProcess {
  readonly name: string
  readonly pid: number
  readonly logFile: string
  /** The first line the process wrote on fd 3 (its readiness message). */
  readonly ready: Record<string, unknown>
  /** Resolves when it exits (only for processes this run started). */
  readonly exited: Promise<void>
}

/** Options of {@link startProcess}. */
export interface StartProcessOptions {
  /** Unique name: pid file `<name>.pid`, log `<name>.log`. */
  readonly name: string
  readonly command: string
  readonly args: readonly string[]
  /** Run inside this network namespace (`ip netns exec`). Default: the demo's own. */
  readonly netns?: string
  /** A string of the command line that identifies the process (checked before killing a pid from a file). */
  readonly identify: string
  /** How long to wait for the readiness line. Default 30 000 ms. */
  readonly timeoutMs?: number
  /** Stops waiting (and stops the process) when aborted. */
  readonly signal?: AbortSignal
}

/** Arguments to run one of this example's TypeScript entry points with the package sources. */
export function tsEntry(file: string, args: readonly string[]): { command: string; args: string[] } {
  return { command: process.execPath, args: ['--import', 'tsx', join(EXAMPLE_DIR, 'src', file), ...args] }
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}

/**
 * Starts a detached process (it outlives the demo with `--keep`) with stdout
 * and stderr in a log file, and waits for its readiness line on fd 3.
 */
export async function startProcess(options: StartProcessOptions, dir = STATE_DIR): Promise<DemoProcess> {
  mkdirSync(state.pids(dir), { recursive: true })
  mkdirSync(state.logs(dir), { recursive: true })
  const logFile = join(state.logs(dir), `${options.name}.log`)
  const log = openSync(logFile, 'a')
  const [command, args] =
    options.netns === undefined ? [options.command, options.args] : ['ip', ['netns', 'exec', options.netns, options.command, ...options.args]]
  let child: ChildProcess
  try {
    child = spawn(command, args, {
      cwd: EXAMPLE_DIR,
      detached: true,
      stdio: ['ignore', log, log, 'pipe'],
      env: { ...process.env, AKM_READY_FD: '3', TSX_TSCONFIG_PATH: join(ROOT_DIR, 'tsconfig.json'), AMBIENTKIT_LOCAL_STATE_DIR: dir },
    })
  } finally {
    closeSync(log)
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  if (child.pid === undefined) throw new Error(`${options.name}: could not start ${command}`)
  writeFileSync(join(state.pids(dir), `${options.name}.pid`), JSON.stringify({ pid: child.pid, identify: options.identify }))
  const timeoutMs = options.timeoutMs ?? 30_000
  const readyFd = child.stdio[3] as Readable
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const lines = createInterface({ input: readyFd })
    const timer = setTimeout(() => done(new Error(`${options.name} not ready after ${timeoutMs} ms; last log lines:\n${tail(logFile)}`)), timeoutMs)
    const onExit = (code: number | null): void => done(new Error(`${options.name} exited (${code}) before it was ready; last log lines:\n${tail(logFile)}`))
    const onAbort = (): void => done(new Error(`interrupted while starting ${options.name}`))
    options.signal?.addEventListener('abort', onAbort)
    if (options.signal?.aborted === true) onAbort()
    const done = (err: Error | undefined, message?: Record<string, unknown>): void => {
      clearTimeout(timer)
      options.signal?.removeEventListener('abort', onAbort)
      child.off('exit', onExit)
      lines.close()
      readyFd.destroy()
      if (err !== undefined) reject(err)
      else resolve(message!)
    }
    lines.once('line', (line) => {
      let message: Record<string, unknown>
      try {
        message = JSON.parse(line) as Record<string, unknown>
      } catch {
        return done(new Error(`${options.name} wrote a malformed readiness line: ${line}`))
      }
      if (message.ready !== true) return done(new Error(`${options.name} failed to start: ${JSON.stringify(message)}; last log lines:\n${tail(logFile)}`))
      done(undefined, message)
    })
    child.once('exit', onExit)
  }).catch(async (err: Error) => {
    await stopPid(child.pid!, exited)
    throw err
  })
  child.unref()
  return { name: options.name, pid: child.pid, logFile, ready, exited }
}

const alive = (pid: number): boolean => existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ')

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function stopPid(pid: number, exited?: Promise<void>, graceMs = 5000, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  try {
    process.kill(pid, signal)
  } catch {
    return
  }
  const gone = exited ?? waitGone(pid, graceMs * 2)
  const timer = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), graceMs).unref())
  if ((await Promise.race([gone.then(() => 'gone' as const), timer])) === 'timeout') {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      return
    }
    await (exited ?? waitGone(pid, graceMs))
  }
}

/** For processes this run did not start (found by pid file): polls /proc, the only way to see another process end. */
async function waitGone(pid: number, limitMs: number): Promise<void> {
  for (let waited = 0; waited < limitMs && alive(pid); waited += 50) await new Promise((resolve) => setTimeout(resolve, 50))
}

/** Stops every process recorded in the pid files whose command line still matches, and removes the files. */
export async function stopRecordedProcesses(dir = STATE_DIR): Promise<string[]> {
  const pidDir = state.pids(dir)
  if (!existsSync(pidDir)) return []
  const stopped: string[] = []
  for (const file of readdirSync(pidDir).filter((f) => f.endsWith('.pid'))) {
    const path = join(pidDir, file)
    try {
      const { pid, identify } = JSON.parse(readFileSync(path, 'utf8')) as { pid: number; identify: string }
      const cmdline = existsSync(`/proc/${pid}/cmdline`) ? readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ') : ''
      if (cmdline.includes(identify)) {
        await stopPid(pid)
        stopped.push(file.replace(/\.pid$/, ''))
      }
    } catch {
      // A pid file from an interrupted write: the namespace sweep catches what it described.
    }
    rmSync(path, { force: true })
  }
  return stopped
}

/** Forgets a process's pid file (it was stopped on purpose). */
export function forgetProcess(name: string, dir = STATE_DIR): void {
  rmSync(join(state.pids(dir), `${name}.pid`), { force: true })
}

/**
 * Processes running one of this example's programs (echo app, node agent,
 * control plane) found by command line: the last resort of `--down` for a
 * crashed run whose pid files and namespaces are already gone.
 */
export function strayProcesses(): number[] {
  const programs = [join(EXAMPLE_DIR, 'app', 'echo.mjs'), join(EXAMPLE_DIR, 'src', 'node-agent-main.ts'), join(EXAMPLE_DIR, 'src', 'control-plane-main.ts')]
  const found: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')
      if (cmdline.some((arg) => programs.includes(arg))) found.push(Number(entry))
    } catch {
      // It ended while we looked.
    }
  }
  return found
}
