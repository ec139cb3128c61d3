import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** A running tcpdump inside a namespace, writing a pcap file. */
export interface PacketCapture {
  /**
   * Resolves once the capture file holds `bytes` (a payload sent last):
   * packets reach the capture in order, so everything sent before it is in
   * the file too. Rejects after `timeoutMs`.
   */
  waitFor(bytes: Buffer, timeoutMs?: number): Promise<void>
  /** Stops the capture and returns the raw pcap bytes. */
  stop(): Promise<Buffer>
}

/**
 * Starts tcpdump on `ifname` inside namespace `ns` and resolves once it is
 * capturing (tcpdump says "listening on" when its socket is open).
 */
export function startPacketCapture(ns: string, ifname: string, filter = 'tcp'): Promise<PacketCapture> {
  const dir = mkdtempSync(join(tmpdir(), 'ak-pcap-'))
  const file = join(dir, 'capture.pcap')
  const child = spawn('nsenter', [`--net=/run/netns/${ns}`, 'tcpdump', '--immediate-mode', '-Z', 'root', '-i', ifname, '-U', '-n', '-w', file, filter], { stdio: ['ignore', 'ignore', 'pipe'] })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  return new Promise((resolve, reject) => {
    let stderr = ''
    const onEarlyExit = (code: number | null): void => {
      rmSync(dir, { recursive: true, force: true })
      reject(new Error(`tcpdump exited (${code}) before capturing: ${stderr.trim()}`))
    }
    const onData = (chunk: Buffer): void => {
      stderr += chunk.toString()
      if (!stderr.includes('listening on')) return
      child.stderr.off('data', onData)
      child.off('exit', onEarlyExit)
      resolve({
        async waitFor(bytes, timeoutMs = 10_000) {
          const deadline = Date.now() + timeoutMs
          while (!readFileSync(file).includes(bytes)) {
            if (Date.now() > deadline) throw new Error(`the capture did not see ${JSON.stringify(bytes.toString())} within ${timeoutMs} ms`)
            await new Promise((resolve) => setTimeout(resolve, 10))
          }
        },
        async stop() {
          child.kill('SIGINT')
          await exited
          try {
            return readFileSync(file)
          } finally {
            rmSync(dir, { recursive: true, force: true })
          }
        },
      })
    }
    child.stderr.on('data', onData)
    child.once('exit', onEarlyExit)
  })
}
