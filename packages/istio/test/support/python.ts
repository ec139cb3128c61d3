import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'

export const PYTHON = '/usr/bin/python3'
const PROTO_DIR = new URL('../../proto/', import.meta.url).pathname
export const INTEROP_DIR = new URL('../interop/', import.meta.url).pathname

/**
 * Why the Python peers cannot run, or undefined when they can: Debian's
 * python3-grpcio, python3-protobuf, protobuf-compiler and libprotobuf-dev
 * (scripts/setup.sh installs them). Under CI a reason is an error.
 */
export function pythonPeerSkipReason(): string | undefined {
  try {
    execFileSync(PYTHON, ['-c', 'import grpc, google.protobuf'], { stdio: 'ignore' })
    execFileSync('protoc', ['--version'], { stdio: 'ignore' })
    return undefined
  } catch {
    const reason = 'Python gRPC peer unavailable: install python3-grpcio python3-protobuf protobuf-compiler libprotobuf-dev (npm run setup)'
    if (process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false') throw new Error(reason)
    return reason
  }
}

/** Compiles the vendored protos with protoc into Python modules; returns their directory. */
export function generatePythonModules(): string {
  const out = mkdtempSync(join(tmpdir(), 'ambientkit-pyproto-'))
  execFileSync('protoc', ['-I', PROTO_DIR, '-I', '/usr/include', `--python_out=${out}`, 'xds.proto', 'workload.proto', 'authorization.proto', 'zds.proto'])
  return out
}

/** A Python program whose stdout is one JSON object per line. */
export interface PythonPeer {
  readonly child: ChildProcess
  /** The next JSON line it printed. */
  next(): Promise<Record<string, unknown>>
  /** Closes its stdin (it exits) and waits for it. */
  stop(): Promise<void>
}

export function startPython(script: string, args: readonly string[]): PythonPeer {
  const child = spawn(PYTHON, [join(INTEROP_DIR, script), ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const lines: string[] = []
  const readers: Array<{ resolve: (line: string) => void; reject: (err: Error) => void }> = []
  let ended = false
  const exited = new Promise<void>((resolve) => child.on('close', () => {
    ended = true
    for (const r of readers.splice(0)) r.reject(new Error(`${script} exited: ${stderr}`))
    resolve()
  }))
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const reader = readers.shift()
    if (reader !== undefined) reader.resolve(line)
    else lines.push(line)
  })
  return {
    child,
    next: () =>
      new Promise<string>((resolve, reject) => {
        const line = lines.shift()
        if (line !== undefined) resolve(line)
        else if (ended) reject(new Error(`${script} exited: ${stderr}`))
        else readers.push({ resolve, reject })
      }).then((line) => JSON.parse(line) as Record<string, unknown>),
    async stop() {
      child.stdin!.end()
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    },
  }
}
