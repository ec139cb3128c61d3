import { readdirSync, readFileSync } from 'node:fs'
import { cpus, loadavg, release } from 'node:os'
import { execFileSync, spawnSync } from 'node:child_process'

/**
 * What the kernel says a process has used, read from /proc: the bench
 * measures proxies as the operating system sees them, whatever language
 * they are written in (our node proxy, stunnel).
 */

// USER_HZ: utime and stime in /proc/<pid>/stat count these ticks (proc(5)).
const CLOCK_TICKS = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
  } catch {
    return 100
  }
})()

/** CPU seconds (user + system, all threads) a process has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // The command name (field 2) may contain spaces and parentheses: fields are counted after its last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // utime and stime are fields 14 and 15 of proc(5), i.e. 12 and 13 after the name.
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
}

/** Resident set size of a process in KiB (`VmRSS` of /proc/<pid>/status). */
/**
 * The anonymous resident memory of `pid` (RssAnon: heaps, malloc arenas,
 * stacks), in KiB: what holding state costs. Unlike VmRSS it leaves out
 * file-backed pages, such as the parts of the Node binary (V8's optimizing
 * compiler, say) first run while connections open, which are shared,
 * reclaimable, and paid once whatever the count.
 */
export function anonKiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const match = /^RssAnon:\s+(\d+) kB$/m.exec(status)
  if (match === null) throw new Error(`no RssAnon in /proc/${pid}/status (is ${pid} a zombie?)`)
  return Number(match[1])
}

export function rssKiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status)
  if (match === null) throw new Error(`no VmRSS in /proc/${pid}/status (is ${pid} a zombie?)`)
  return Number(match[1])
}

/**
 * Seconds each thread of `pid` has spent runnable but waiting for a CPU
 * (second field of /proc/<pid>/task/<tid>/schedstat, nanoseconds), keyed
 * `pid/tid`: on a busy machine this, not the proxy's own work, can be what
 * limits a figure. Every thread, since the native data path's threads, not
 * the main one, carry the bytes.
 */
export function runQueueWaits(pid: number): Map<string, number> {
  const waits = new Map<string, number>()
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      waits.set(`${pid}/${tid}`, Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').trim().split(' ')[1]) / 1e9)
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return waits
}

/** Total CPU seconds of several processes. */
export function totalCpuSeconds(pids: readonly number[]): number {
  return pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0)
}

/**
 * Samples the RSS of `pids` every `intervalMs` until stopped, keeping each
 * one's peak: the "under load" figure (VmHWM would include start-up peaks).
 */
export function sampleRss(pids: readonly number[], intervalMs = 50): { stop(): number[] } {
  const peaks = pids.map((pid) => rssKiB(pid))
  const timer = setInterval(() => {
    pids.forEach((pid, i) => {
      try {
        peaks[i] = Math.max(peaks[i]!, rssKiB(pid))
      } catch {
        // The process ended; its last peak stands and the caller sees the failure elsewhere.
      }
    })
  }, intervalMs)
  return {
    stop() {
      clearInterval(timer)
      return peaks
    },
  }
}

/** The machine the figures were taken on. */
export interface MachineInfo {
  cpuModel: string
  cores: number
  kernel: string
  node: string
  stunnel: string
  /** Absent in results from before HAProxy was measured. */
  haproxy?: string
  iperf3: string
  memoryGiB: number
  /** 1-minute load average when this was read (the bench reads it before it starts): above `cores`, other work competed with the bench. */
  loadAverage: number
}

/** The first line of a program's output (stdout or stderr: stunnel prints its version on stderr) that holds a version number. */
function versionLine(command: string, args: readonly string[]): string {
  const result = spawnSync(command, args, { encoding: 'utf8' })
  return `${result.stdout ?? ''}\n${result.stderr ?? ''}`.split('\n').find((line) => /\d+\.\d+/.test(line))?.trim() ?? 'unknown'
}

/** Reads the machine description at run time. */
export function machineInfo(): MachineInfo {
  const meminfo = readFileSync('/proc/meminfo', 'utf8')
  const total = Number(/^MemTotal:\s+(\d+) kB$/m.exec(meminfo)?.[1] ?? 0)
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  return {
    cpuModel: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    kernel: release(),
    node: process.version,
    stunnel: versionLine('stunnel4', ['-version']).replace(/^.*?(stunnel [\d.]+).*$/, '$1'),
    haproxy: versionLine('haproxy', ['-v']).replace(/^HAProxy version ([\d.]+).*$/, 'HAProxy $1'),
    iperf3: versionLine('iperf3', ['--version']).replace(/ \(.*$/, ''),
    memoryGiB: Math.round((total / 1024 / 1024) * 10) / 10,
    loadAverage: Math.round(loadavg()[0]! * 100) / 100,
  }
}

/** Whether a process with this pid runs (signal 0 tests for it without sending anything). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
