import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { HBONE_PORT } from '@ambientkit/core'
import type { NodeConfig } from './config'
import { netnsName, netnsPath } from './paths'
import { stopPid } from './processes'
import { linkInterface } from './topology'

/** A running capture on the link between two nodes. */
export interface Capture {
  /** Which link, for a report. */
  readonly link: string
  /** Stops tcpdump (SIGINT, so it flushes) and resolves once it has exited. */
  stop(): Promise<void>
}

/**
 * Captures TCP on the link between nodes `a` and `b` (tcpdump in `a`'s
 * namespace) into `file`; with `rotateMb`, into files of that size named
 * `file`, `file1`, `file2`... Resolves once tcpdump listens: from then on
 * nothing is missed.
 */
export async function captureLink(a: NodeConfig, b: NodeConfig, file: string, { rotateMb }: { rotateMb?: number } = {}): Promise<Capture> {
  const iface = linkInterface(b)
  // nsenter execs tcpdump itself, so SIGINT reaches it; --immediate-mode hands
  // it every packet at once instead of in blocks a stop could cut short.
  const rotate = rotateMb === undefined ? [] : ['-C', String(rotateMb)]
  const child = spawn('nsenter', [`--net=${netnsPath(netnsName.node(a.name))}`, 'tcpdump', '--immediate-mode', '-i', iface, '-n', '-s', '0', '-U', '-Z', 'root', ...rotate, '-w', file, 'tcp'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  // tcpdump says "listening on <if>" once its socket is bound.
  await new Promise<void>((resolve, reject) => {
    let text = ''
    const timer = setTimeout(() => reject(new Error(`tcpdump did not start: ${text}`)), 10_000)
    child.stderr.on('data', (chunk: Buffer) => {
      text += chunk.toString()
      if (text.includes('listening on')) {
        clearTimeout(timer)
        resolve()
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`tcpdump exited (${code}): ${text}`))
    })
  })
  child.stderr.resume()
  return {
    link: `${a.name} ${iface} ⇄ ${b.name} ${linkInterface(a)}`,
    stop: () => stopPid(child.pid!, exited, 5000, 'SIGINT'),
  }
}

/** What a packet capture on the link between the nodes shows. */
export interface CaptureAnalysis {
  readonly packets: number
  /** TCP connections seen, by destination port. */
  readonly connectionsByPort: Readonly<Record<string, number>>
  /** TLS records seen in the port-15008 streams, by type. */
  readonly tlsRecords: { handshake: number; applicationData: number; alert: number; changeCipherSpec: number }
  /** Bytes of port-15008 streams that did not parse as TLS records (should be 0). */
  readonly nonTlsBytesOn15008: number
  /** Payload bytes seen on other ports, in the clear. */
  readonly plaintextBytes: number
  /** Markers found anywhere in a TCP stream's bytes. */
  readonly markersFound: readonly string[]
}

interface Stream {
  port: number
  nextSeq: number | undefined
  chunks: Buffer[]
}

/**
 * Reads a classic pcap file (Ethernet, as tcpdump writes on a veth),
 * reassembles each TCP direction, parses the 15008 streams as TLS records
 * (RFC 8446 §5.1: type, version, 16-bit length) and looks for `markers`.
 */
export function analyseCapture(file: string, markers: readonly string[], hbonePort = HBONE_PORT): CaptureAnalysis {
  const data = readFileSync(file)
  if (data.length < 24) return { packets: 0, connectionsByPort: {}, tlsRecords: { handshake: 0, applicationData: 0, alert: 0, changeCipherSpec: 0 }, nonTlsBytesOn15008: 0, plaintextBytes: 0, markersFound: [] }
  const magic = data.readUInt32LE(0)
  const le = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d
  if (!le && data.readUInt32BE(0) !== 0xa1b2c3d4 && data.readUInt32BE(0) !== 0xa1b23c4d) throw new Error(`${file} is not a pcap file`)
  const u32 = (o: number): number => (le ? data.readUInt32LE(o) : data.readUInt32BE(o))
  const linkType = u32(20)
  if (linkType !== 1) throw new Error(`${file}: link type ${linkType}, expected Ethernet (1)`)
  const streams = new Map<string, Stream>()
  const connections = new Map<string, number>()
  let packets = 0
  for (let offset = 24; offset + 16 <= data.length; ) {
    const captured = u32(offset + 8)
    const frame = data.subarray(offset + 16, offset + 16 + captured)
    offset += 16 + captured
    packets += 1
    if (frame.length < 34 || frame.readUInt16BE(12) !== 0x0800) continue
    const ip = frame.subarray(14)
    const ihl = (ip[0]! & 0x0f) * 4
    if (ip[9] !== 6) continue
    const total = ip.readUInt16BE(2)
    const tcp = ip.subarray(ihl, total)
    const srcPort = tcp.readUInt16BE(0)
    const dstPort = tcp.readUInt16BE(2)
    const seq = tcp.readUInt32BE(4)
    const flags = tcp[13]!
    const payload = tcp.subarray((tcp[12]! >> 4) * 4)
    const src = `${ip[12]}.${ip[13]}.${ip[14]}.${ip[15]}:${srcPort}`
    const dst = `${ip[16]}.${ip[17]}.${ip[18]}.${ip[19]}:${dstPort}`
    const key = `${src}>${dst}`
    // A SYN without ACK opens a connection; count it under the server port.
    if ((flags & 0x02) !== 0 && (flags & 0x10) === 0) connections.set(String(dstPort), (connections.get(String(dstPort)) ?? 0) + 1)
    let stream = streams.get(key)
    if (stream === undefined) {
      stream = { port: srcPort === hbonePort || dstPort === hbonePort ? hbonePort : Math.min(srcPort, dstPort), nextSeq: undefined, chunks: [] }
      streams.set(key, stream)
    }
    if ((flags & 0x02) !== 0) {
      stream.nextSeq = (seq + 1) >>> 0
      continue
    }
    if (payload.length === 0) continue
    if (stream.nextSeq === undefined) stream.nextSeq = seq
    const skip = (stream.nextSeq - seq) | 0
    if (skip >= payload.length) continue
    stream.chunks.push(skip > 0 ? payload.subarray(skip) : payload)
    stream.nextSeq = (seq + payload.length) >>> 0
  }
  const tlsRecords = { handshake: 0, applicationData: 0, alert: 0, changeCipherSpec: 0 }
  let nonTlsBytesOn15008 = 0
  let plaintextBytes = 0
  const found = new Set<string>()
  for (const stream of streams.values()) {
    const bytes = Buffer.concat(stream.chunks)
    for (const marker of markers) if (bytes.includes(marker)) found.add(marker)
    if (stream.port !== hbonePort) {
      plaintextBytes += bytes.length
      continue
    }
    let i = 0
    while (i + 5 <= bytes.length) {
      const type = bytes[i]!
      const major = bytes[i + 1]
      const length = bytes.readUInt16BE(i + 3)
      if (major !== 3 || type < 20 || type > 23) break
      if (type === 20) tlsRecords.changeCipherSpec += 1
      else if (type === 21) tlsRecords.alert += 1
      else if (type === 22) tlsRecords.handshake += 1
      else tlsRecords.applicationData += 1
      i += 5 + length
    }
    // A record cut by the end of the capture is still TLS; anything else is not.
    if (i < bytes.length && !(i + 5 <= bytes.length && bytes[i + 1] === 3)) nonTlsBytesOn15008 += bytes.length - i
  }
  return { packets, connectionsByPort: Object.fromEntries(connections), tlsRecords, nonTlsBytesOn15008, plaintextBytes, markersFound: [...found] }
}
