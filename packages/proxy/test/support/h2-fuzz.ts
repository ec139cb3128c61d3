// A structure-aware HTTP/2 fuzzer for HBONE servers: seeded sequences of
// valid and invalid frames (fast-check arbitraries of `Op`s), sent over a
// mutual-TLS connection, and what the server answered. Every op is plain
// data, so a failing sequence prints as JSON and replays from its seed.
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls'
import fc from 'fast-check'
import {
  ErrorCode,
  Flag,
  FrameType,
  PREFACE,
  Setting,
  frame,
  frameReader,
  goaway,
  headerBlock,
  hpackLiteral,
  ping,
  rstStream,
  settings,
  u32,
  windowUpdate,
  type ReadFrame,
} from './h2-frames'

/** Where a CONNECT goes: served by echo, served by an upstream that never connects, denied, unknown, or a raw `:authority`. */
export type Destination = 'echo' | 'stall' | 'deny' | 'unknown' | { readonly raw: string }

/** A header value, or a long one written as its length. */
export type HeaderValue = string | { readonly repeat: number }

/** Which stream an op addresses. */
export type StreamRef = 'last' | 'idle' | 'zero' | 'even' | 'lower'

export type Op =
  | { readonly k: 'settings'; readonly params: ReadonlyArray<readonly [number, number]>; readonly ack: boolean; readonly stream: number; readonly extraBytes: number }
  | { readonly k: 'settingsFlood'; readonly count: number }
  | { readonly k: 'ping'; readonly count: number; readonly length: number; readonly stream: number; readonly ack: boolean }
  | { readonly k: 'window'; readonly target: StreamRef | 'connection'; readonly increment: number; readonly count: number }
  | { readonly k: 'rst'; readonly target: StreamRef; readonly code: number; readonly count: number }
  | { readonly k: 'rapidReset'; readonly count: number; readonly destination: Destination }
  | {
      readonly k: 'connect'
      readonly destination: Destination
      readonly method: string
      readonly omitAuthority: boolean
      readonly pseudo: ReadonlyArray<readonly [string, string]>
      /** Extra header fields; a value `{ repeat: n }` is n bytes (kept short in a printed counterexample). */
      readonly extra: ReadonlyArray<readonly [string, HeaderValue]>
      readonly endStream: boolean
      /** Header block split into CONTINUATIONs of this many bytes (0: one HEADERS frame). */
      readonly fragment: number
      /** Leave the header block open (no END_HEADERS anywhere). */
      readonly unterminated: boolean
      readonly priority: boolean
      readonly padding: number | undefined
      readonly stream: 'next' | StreamRef
      /** Bytes sent as DATA once the HEADERS are out. */
      readonly send: number
    }
  | { readonly k: 'hpack'; readonly bytes: Uint8Array; readonly endHeaders: boolean }
  | { readonly k: 'continuationFlood'; readonly count: number; readonly size: number }
  | { readonly k: 'data'; readonly target: StreamRef; readonly size: number; readonly endStream: boolean; readonly padding: number | undefined }
  | { readonly k: 'streams'; readonly beyondLimit: number; readonly destination: 'stall' | 'echo' }
  | { readonly k: 'stall' }
  | { readonly k: 'priority'; readonly target: StreamRef; readonly dependency: 'self' | number; readonly weight: number }
  | { readonly k: 'unknown'; readonly type: number; readonly flags: number; readonly stream: number; readonly size: number }
  | { readonly k: 'oversized'; readonly type: number; readonly over: number }
  | { readonly k: 'goaway'; readonly code: number }
  | { readonly k: 'pushPromise' }
  | { readonly k: 'garbage'; readonly bytes: Uint8Array }

/** What the server under test serves, from its child process. */
export interface FuzzTarget {
  readonly port: number
  readonly echoPort: number
  readonly stallPort: number
  readonly maxStreams: number
}

const ANY_CODE = fc.oneof(fc.integer({ min: 0, max: 0xd }), fc.nat())
const STREAM_REF = fc.constantFrom<StreamRef>('last', 'idle', 'zero', 'even', 'lower')
const HEADER_NAMES = ['forwarded', 'baggage', 'traceparent', 'x-fuzz', 'connection', 'te', 'upgrade', 'keep-alive', 'transfer-encoding', 'host', 'content-length', 'X-Upper', 'bad name', 'bad:colon', '', 'a\u0000b']
const HEADER_VALUES = ['for=192.0.2.60', 'for="[2001:db8::17]:4711"', 'trailers', 'close', ' leading', 'trailing ', 'a\r\nb', 'nul\u0000', '\u00ff\u00fe', '100']
const BAD_AUTHORITIES = ['', 'localhost:80', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:65536', '127.0.0.1:080', '[::1]', '[::1:80', '::1:80', '[fe80::1%lo]:80', ' 127.0.0.1:80', '127.0.0.1:80 ', '1.2.3.4:5:6', 'user@127.0.0.1:80', '127.0.0.1:80/path', '%31.0.0.1:80']

const destinationArb: fc.Arbitrary<Destination> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom<Destination>('echo', 'stall', 'deny', 'unknown') },
  { weight: 2, arbitrary: fc.constantFrom(...BAD_AUTHORITIES).map((raw) => ({ raw })) },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map((raw) => ({ raw })) },
)

const headerArb = fc.tuple(
  fc.oneof(fc.constantFrom(...HEADER_NAMES), fc.string({ maxLength: 12 })),
  fc.oneof(fc.constantFrom(...HEADER_VALUES), fc.string({ maxLength: 30 }), fc.integer({ min: 1, max: 70_000 }).map((repeat): HeaderValue => ({ repeat }))),
)

const settingArb = fc.tuple(
  fc.oneof(fc.constantFrom(...Object.values(Setting)), fc.integer({ min: 0, max: 0xffff })),
  fc.oneof(fc.constantFrom(0, 1, 2, 16_383, 16_384, 16_777_215, 16_777_216, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1), fc.nat()),
)

/** One op; sizes and counts are bounded so a sequence stays small. */
export const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ k: fc.constant('settings' as const), params: fc.array(settingArb, { maxLength: 6 }), ack: fc.boolean(), stream: fc.constantFrom(0, 0, 0, 1), extraBytes: fc.constantFrom(0, 0, 0, 1, 5) }),
  fc.record({ k: fc.constant('settingsFlood' as const), count: fc.integer({ min: 1, max: 2000 }) }),
  fc.record({ k: fc.constant('ping' as const), count: fc.integer({ min: 1, max: 2000 }), length: fc.constantFrom(8, 8, 8, 0, 7, 9), stream: fc.constantFrom(0, 0, 0, 1), ack: fc.boolean() }),
  fc.record({ k: fc.constant('window' as const), target: fc.oneof(fc.constant('connection' as const), STREAM_REF), increment: fc.oneof(fc.constantFrom(0, 1, 2 ** 31 - 1), fc.nat()), count: fc.integer({ min: 1, max: 200 }) }),
  fc.record({ k: fc.constant('rst' as const), target: STREAM_REF, code: ANY_CODE, count: fc.integer({ min: 1, max: 50 }) }),
  fc.record({ k: fc.constant('rapidReset' as const), count: fc.integer({ min: 1, max: 500 }), destination: destinationArb }),
  fc.record({
    k: fc.constant('connect' as const),
    destination: destinationArb,
    method: fc.constantFrom('CONNECT', 'CONNECT', 'CONNECT', 'GET', 'connect', ''),
    omitAuthority: fc.constantFrom(false, false, false, false, false, false, false, false, false, true),
    pseudo: fc.array(fc.tuple(fc.constantFrom(':path', ':scheme', ':protocol', ':status', ':method', ':authority', ':bogus'), fc.constantFrom('/', 'https', 'websocket', '200', 'CONNECT', '127.0.0.1:1')), { maxLength: 2 }),
    extra: fc.array(headerArb, { maxLength: 4 }),
    endStream: fc.boolean(),
    fragment: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 64 })),
    unterminated: fc.boolean(),
    priority: fc.boolean(),
    padding: fc.option(fc.integer({ min: 0, max: 255 }), { nil: undefined }),
    stream: fc.oneof(fc.constant('next' as const), fc.constant('next' as const), STREAM_REF),
    send: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 200_000 })),
  }),
  fc.record({ k: fc.constant('hpack' as const), bytes: fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.constantFrom(Buffer.of(0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f), Buffer.of(0xff, 0xff, 0x7f), Buffer.of(0x3f, 0xe1, 0xff, 0xff, 0x0f), Buffer.of(0x00, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff))), endHeaders: fc.boolean() }),
  fc.record({ k: fc.constant('continuationFlood' as const), count: fc.integer({ min: 1, max: 2000 }), size: fc.integer({ min: 0, max: 4096 }) }),
  fc.record({ k: fc.constant('data' as const), target: STREAM_REF, size: fc.integer({ min: 0, max: 70_000 }), endStream: fc.boolean(), padding: fc.option(fc.integer({ min: 0, max: 255 }), { nil: undefined }) }),
  fc.record({ k: fc.constant('streams' as const), beyondLimit: fc.integer({ min: 1, max: 200 }), destination: fc.constantFrom('stall' as const, 'echo' as const) }),
  fc.constant({ k: 'stall' as const }),
  fc.record({ k: fc.constant('priority' as const), target: STREAM_REF, dependency: fc.oneof(fc.constant('self' as const), fc.nat()), weight: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ k: fc.constant('unknown' as const), type: fc.integer({ min: 0xa, max: 0xff }), flags: fc.integer({ min: 0, max: 0xff }), stream: fc.nat({ max: 7 }), size: fc.integer({ min: 0, max: 1024 }) }),
  fc.record({ k: fc.constant('oversized' as const), type: fc.integer({ min: 0, max: 0xa }), over: fc.integer({ min: 1, max: 4096 }) }),
  fc.record({ k: fc.constant('goaway' as const), code: ANY_CODE }),
  fc.constant({ k: 'pushPromise' as const }),
  fc.record({ k: fc.constant('garbage' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
)

export const sequenceArb = fc.array(opArb, { minLength: 1, maxLength: 8 })

/** What one sequence saw from the server. */
export interface SequenceOutcome {
  readonly goaways: ReadonlyArray<{ readonly lastStream: number; readonly code: number }>
  readonly resets: ReadonlyArray<{ readonly stream: number; readonly code: number }>
  /** The server answered the final PING: it processed everything before it. */
  readonly answered: boolean
  /** The server closed the connection (after a GOAWAY, or at once). */
  readonly closedByServer: boolean
  /** Frames the server must never send (a pushed stream, a frame on a stream never opened, an unknown error code). */
  readonly violations: readonly string[]
}

const DONE = Buffer.from('fuzzdone')

/**
 * Sends one sequence over a fresh mutual-TLS connection, then a PING, and
 * waits (up to `deadlineMs`) until the server answers it or closes the
 * connection; then closes its side.
 */
export async function runSequence(target: FuzzTarget, tls: ConnectionOptions, ops: readonly Op[], deadlineMs: number, options: { awaitClose?: boolean } = {}): Promise<SequenceOutcome> {
  const socket = tlsConnect({ ...tls, host: '127.0.0.1', port: target.port, ALPNProtocols: ['h2'] })
  const goaways: Array<{ lastStream: number; code: number }> = []
  const resets: Array<{ stream: number; code: number }> = []
  const violations: string[] = []
  const opened = new Set<number>()
  let answered = false
  let closedByServer = false
  let stalled = false
  let serverMaxFrame = 16_384
  let wake: () => void = () => {}
  const changed = (): void => wake()
  const errorCodeKnown = (code: number): boolean => code <= ErrorCode.HTTP_1_1_REQUIRED

  const write = (bytes: Buffer): void => {
    if (!socket.destroyed && socket.writable) socket.write(bytes)
  }
  const onFrame = (f: ReadFrame): void => {
    switch (f.type) {
      case FrameType.SETTINGS:
        if ((f.flags & Flag.ACK) === 0) {
          for (let i = 0; i + 6 <= f.payload.length; i += 6) if (f.payload.readUInt16BE(i) === Setting.MAX_FRAME_SIZE) serverMaxFrame = f.payload.readUInt32BE(i + 2)
          write(settings([], Flag.ACK))
        }
        break
      case FrameType.PING:
        if ((f.flags & Flag.ACK) === 0) write(ping(f.payload, Flag.ACK))
        else if (f.payload.equals(DONE)) answered = true
        break
      case FrameType.GOAWAY:
        goaways.push({ lastStream: f.payload.readUInt32BE(0) & 0x7fffffff, code: f.payload.readUInt32BE(4) })
        if (!errorCodeKnown(f.payload.readUInt32BE(4))) violations.push(`GOAWAY with unknown error code ${f.payload.readUInt32BE(4)}`)
        break
      case FrameType.RST_STREAM:
        resets.push({ stream: f.stream, code: f.payload.readUInt32BE(0) })
        if (!errorCodeKnown(f.payload.readUInt32BE(0))) violations.push(`RST_STREAM with unknown error code ${f.payload.readUInt32BE(0)}`)
        break
      case FrameType.PUSH_PROMISE:
        violations.push('PUSH_PROMISE although the client disabled push')
        break
      case FrameType.HEADERS:
      case FrameType.DATA:
        if (!opened.has(f.stream)) violations.push(`${f.type === FrameType.DATA ? 'DATA' : 'HEADERS'} on stream ${f.stream}, which the client never opened`)
        // Keep reading what the tunnels echo unless the op sequence stalls flow control.
        if (f.type === FrameType.DATA && f.payload.length > 0 && !stalled) write(Buffer.concat([windowUpdate(0, f.payload.length), windowUpdate(f.stream, f.payload.length)]))
        break
    }
    changed()
  }
  let finishing = false
  let gone = false
  // The server ending, resetting or closing the connection (a reset can lose the GOAWAY before it).
  const serverClosed = (): void => {
    closedByServer ||= !finishing
    changed()
  }
  socket.on('data', frameReader(onFrame))
  socket.on('end', serverClosed)
  socket.on('error', serverClosed)
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      gone = true
      serverClosed()
      resolve()
    }),
  )
  const deadline = Date.now() + deadlineMs
  // Waits for a condition the server's frames or the close can make true, up to the deadline.
  const until = async (condition: () => boolean): Promise<void> => {
    while (!condition() && !gone && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        wake = resolve
        setTimeout(resolve, Math.max(1, deadline - Date.now())).unref()
      })
    }
  }

  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve)
    socket.once('close', () => reject(new Error('the server closed the connection during the TLS handshake')))
  })
  write(Buffer.concat([PREFACE, settings([[Setting.ENABLE_PUSH, 0]])]))

  const state = new StreamState()
  for (const op of ops) {
    if (gone || closedByServer) break
    if (op.k === 'stall') stalled = true
    for (const bytes of encodeOp(op, state, target, serverMaxFrame)) {
      write(bytes)
      // Keep memory bounded: wait while the server is not reading.
      if (socket.writableLength > 4 * 1024 * 1024) await until(() => socket.writableLength < 1024 * 1024)
    }
    for (const id of state.takeOpened()) opened.add(id)
  }
  write(ping(DONE))
  // A GOAWAY for an error ends the session: the PING will not be answered (and the server must close, RFC 9113 §5.4.1).
  const failed = (): boolean => goaways.some((g) => g.code !== ErrorCode.NO_ERROR)
  await until(options.awaitClose === true ? () => closedByServer : () => answered || closedByServer || failed())
  finishing = true
  socket.end()
  await Promise.race([closed, new Promise<void>((resolve) => setTimeout(resolve, 200).unref())])
  if (!socket.destroyed) socket.destroy()
  await closed
  return { goaways, resets, answered, closedByServer, violations }
}

/** Stream ids the client used, for ops that address the last, an idle or a lower one. */
class StreamState {
  next = 1
  last = 0
  #opened: number[] = []

  open(): number {
    const id = this.next
    this.next += 2
    this.last = id
    this.#opened.push(id)
    return id
  }

  resolve(ref: StreamRef): number {
    switch (ref) {
      case 'last':
        return this.last === 0 ? this.next : this.last
      case 'idle':
        return this.next + 200
      case 'zero':
        return 0
      case 'even':
        return this.next + 1
      case 'lower':
        return Math.max(1, this.last - 2)
    }
  }

  /** Marks a stream as opened by the client (the server may answer on it). */
  used(id: number): void {
    this.#opened.push(id)
    if (id >= this.next && id % 2 === 1) {
      this.next = id + 2
      this.last = id
    }
  }

  takeOpened(): number[] {
    return this.#opened.splice(0)
  }
}

function authorityOf(destination: Destination, target: FuzzTarget): string {
  if (typeof destination === 'object') return destination.raw
  const port = { echo: target.echoPort, stall: target.stallPort, deny: 401, unknown: 1 }[destination]
  return `127.0.0.1:${port}`
}

function connectBlock(destination: Destination, target: FuzzTarget, extra: ReadonlyArray<readonly [string, HeaderValue]> = [], method = 'CONNECT', omitAuthority = false, pseudo: ReadonlyArray<readonly [string, string]> = []): Buffer {
  const headers: Array<readonly [string, string]> = [[':method', method]]
  if (!omitAuthority) headers.push([':authority', authorityOf(destination, target)])
  const values = extra.map(([name, value]) => [name, typeof value === 'string' ? value : 'v'.repeat(value.repeat)] as const)
  return headerBlock([...headers, ...pseudo, ...values])
}

function padded(payload: Buffer, padding: number | undefined): Buffer {
  return padding === undefined ? payload : Buffer.concat([Buffer.of(padding), payload, Buffer.alloc(padding)])
}

function* dataFrames(stream: number, size: number, endStream: boolean, maxFrame: number, padding?: number): Generator<Buffer> {
  let left = size
  do {
    const n = Math.min(left, maxFrame - (padding === undefined ? 0 : padding + 1))
    left -= Math.max(0, n)
    yield frame(FrameType.DATA, (left === 0 && endStream ? Flag.END_STREAM : 0) | (padding === undefined ? 0 : Flag.PADDED), stream, padded(Buffer.alloc(Math.max(0, n), 0x61), padding))
  } while (left > 0)
}

function* encodeOp(op: Op, state: StreamState, target: FuzzTarget, maxFrame: number): Generator<Buffer> {
  switch (op.k) {
    case 'settings': {
      const f = settings(op.params, op.ack ? Flag.ACK : 0, op.stream)
      if (op.extraBytes === 0) yield f
      else yield frame(FrameType.SETTINGS, op.ack ? Flag.ACK : 0, op.stream, Buffer.concat([f.subarray(9), Buffer.alloc(op.extraBytes)]))
      return
    }
    case 'settingsFlood':
      yield Buffer.concat(Array.from({ length: op.count }, () => settings([[Setting.ENABLE_PUSH, 0]])))
      return
    case 'ping':
      yield Buffer.concat(Array.from({ length: op.count }, (_, i) => ping(Buffer.alloc(op.length, i & 0xff), op.ack ? Flag.ACK : 0, op.stream)))
      return
    case 'window': {
      const stream = op.target === 'connection' ? 0 : state.resolve(op.target)
      yield Buffer.concat(Array.from({ length: op.count }, () => windowUpdate(stream, op.increment)))
      return
    }
    case 'rst':
      yield Buffer.concat(Array.from({ length: op.count }, () => rstStream(state.resolve(op.target), op.code)))
      return
    case 'rapidReset': {
      const block = connectBlock(op.destination, target)
      const frames: Buffer[] = []
      for (let i = 0; i < op.count; i++) {
        const id = state.open()
        frames.push(frame(FrameType.HEADERS, Flag.END_HEADERS, id, block), rstStream(id, ErrorCode.CANCEL))
      }
      yield Buffer.concat(frames)
      return
    }
    case 'connect': {
      let id: number
      if (op.stream === 'next') id = state.open()
      else {
        id = state.resolve(op.stream)
        state.used(id)
      }
      let block = connectBlock(op.destination, target, op.extra, op.method, op.omitAuthority, op.pseudo)
      if (op.priority) block = Buffer.concat([u32(0), Buffer.of(15), block])
      const flags = (op.endStream ? Flag.END_STREAM : 0) | (op.priority ? Flag.PRIORITY : 0) | (op.padding === undefined ? 0 : Flag.PADDED)
      // A header block too big for one frame always goes out in CONTINUATIONs.
      const size = op.fragment > 0 ? op.fragment : maxFrame - 300
      const first = block.subarray(0, size)
      const rest: Buffer[] = []
      for (let at = size; at < block.length; at += size) rest.push(block.subarray(at, at + size))
      const endHeaders = (last: boolean): number => (last && !op.unterminated ? Flag.END_HEADERS : 0)
      yield frame(FrameType.HEADERS, flags | endHeaders(rest.length === 0), id, padded(first, op.padding))
      yield* rest.map((part, i) => frame(FrameType.CONTINUATION, endHeaders(i === rest.length - 1), id, part))
      if (op.send > 0 && !op.endStream) yield* dataFrames(id, op.send, false, maxFrame)
      return
    }
    case 'hpack': {
      const id = state.open()
      yield frame(FrameType.HEADERS, op.endHeaders ? Flag.END_HEADERS : 0, id, Buffer.from(op.bytes))
      return
    }
    case 'continuationFlood': {
      const id = state.open()
      const frames = [frame(FrameType.HEADERS, 0, id, connectBlock('echo', target))]
      for (let i = 0; i < op.count; i++) frames.push(frame(FrameType.CONTINUATION, 0, id, hpackLiteral(`x-flood-${i % 10}`, 'f'.repeat(op.size))))
      yield Buffer.concat(frames)
      return
    }
    case 'data': {
      const stream = state.resolve(op.target)
      yield* dataFrames(stream, op.size, op.endStream, maxFrame, op.padding)
      return
    }
    case 'streams': {
      const block = connectBlock(op.destination, target)
      const frames: Buffer[] = []
      for (let i = 0; i < target.maxStreams + op.beyondLimit; i++) frames.push(frame(FrameType.HEADERS, Flag.END_HEADERS, state.open(), block))
      yield Buffer.concat(frames)
      return
    }
    case 'stall':
      // From now on the client returns no window: what the server sends is held by flow control.
      yield* encodeOp({ k: 'connect', destination: 'echo', method: 'CONNECT', omitAuthority: false, pseudo: [], extra: [], endStream: false, fragment: 0, unterminated: false, priority: false, padding: undefined, stream: 'next', send: 256 * 1024 }, state, target, maxFrame)
      return
    case 'priority': {
      const stream = state.resolve(op.target)
      const dependency = op.dependency === 'self' ? stream : op.dependency
      yield frame(FrameType.PRIORITY, 0, stream, Buffer.concat([u32(dependency), Buffer.of(op.weight)]))
      return
    }
    case 'unknown':
      yield frame(op.type, op.flags, op.stream, Buffer.alloc(op.size, 0x75))
      return
    case 'oversized':
      yield frame(op.type, 0, op.type === FrameType.SETTINGS || op.type === FrameType.PING || op.type === FrameType.GOAWAY ? 0 : Math.max(1, state.last), Buffer.alloc(maxFrame + op.over))
      return
    case 'goaway':
      yield goaway(state.last, op.code)
      return
    case 'pushPromise':
      yield frame(FrameType.PUSH_PROMISE, Flag.END_HEADERS, Math.max(1, state.last), Buffer.concat([u32(2), headerBlock([[':method', 'GET']])]))
      return
    case 'garbage':
      yield Buffer.from(op.bytes)
      return
  }
}

/** A stream-level or connection-level answer the RFC fixes for a sequence. */
export interface RfcExpectation {
  /** RFC 9113 section that fixes it. */
  readonly section: string
  readonly ops: readonly Op[]
  /** The error code of the GOAWAY (connection error) or, for stream errors, of the RST_STREAM (a GOAWAY with it also conforms). */
  readonly code: number
  readonly level: 'connection' | 'stream'
  /**
   * Also conforming: no error at all. For RFC 7540's priority signals,
   * which RFC 9113 §5.3.2 deprecates and nghttp2 (Node's, and so the
   * addon's) ignores since it announces SETTINGS_NO_RFC7540_PRIORITIES
   * (RFC 9218 §2.1).
   */
  readonly mayIgnore?: boolean
}

const connectOp = (overrides: Partial<Extract<Op, { k: 'connect' }>> = {}): Op => ({
  k: 'connect', destination: 'stall', method: 'CONNECT', omitAuthority: false, pseudo: [], extra: [], endStream: false, fragment: 0, unterminated: false, priority: false, padding: undefined, stream: 'next', send: 0, ...overrides,
})

/** Single violations whose answer RFC 9113 fixes, for both data paths. */
export const RFC_CASES: ReadonlyArray<readonly [string, RfcExpectation]> = [
  ['SETTINGS with a length not a multiple of 6', { section: '6.5', level: 'connection', code: ErrorCode.FRAME_SIZE_ERROR, ops: [{ k: 'settings', params: [[Setting.ENABLE_PUSH, 0]], ack: false, stream: 0, extraBytes: 1 }] }],
  ['SETTINGS ACK with a payload', { section: '6.5', level: 'connection', code: ErrorCode.FRAME_SIZE_ERROR, ops: [{ k: 'settings', params: [[Setting.ENABLE_PUSH, 0]], ack: true, stream: 0, extraBytes: 0 }] }],
  ['SETTINGS on a stream', { section: '6.5', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [{ k: 'settings', params: [], ack: false, stream: 1, extraBytes: 0 }] }],
  ['SETTINGS_ENABLE_PUSH of 2', { section: '6.5.2', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [{ k: 'settings', params: [[Setting.ENABLE_PUSH, 2]], ack: false, stream: 0, extraBytes: 0 }] }],
  ['SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1', { section: '6.5.2', level: 'connection', code: ErrorCode.FLOW_CONTROL_ERROR, ops: [{ k: 'settings', params: [[Setting.INITIAL_WINDOW_SIZE, 2 ** 31]], ack: false, stream: 0, extraBytes: 0 }] }],
  ['SETTINGS_MAX_FRAME_SIZE below 16384', { section: '6.5.2', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [{ k: 'settings', params: [[Setting.MAX_FRAME_SIZE, 16_383]], ack: false, stream: 0, extraBytes: 0 }] }],
  ['PING of 7 bytes', { section: '6.7', level: 'connection', code: ErrorCode.FRAME_SIZE_ERROR, ops: [{ k: 'ping', count: 1, length: 7, stream: 0, ack: false }] }],
  ['PING on a stream', { section: '6.7', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [{ k: 'ping', count: 1, length: 8, stream: 1, ack: false }] }],
  ['WINDOW_UPDATE of 0 on the connection', { section: '6.9', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [{ k: 'window', target: 'connection', increment: 0, count: 1 }] }],
  ['WINDOW_UPDATE overflowing the connection window', { section: '6.9.1', level: 'connection', code: ErrorCode.FLOW_CONTROL_ERROR, ops: [{ k: 'window', target: 'connection', increment: 2 ** 31 - 1, count: 2 }] }],
  ['WINDOW_UPDATE of 0 on a stream', { section: '6.9', level: 'stream', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp(), { k: 'window', target: 'last', increment: 0, count: 1 }] }],
  ['DATA on stream 0', { section: '6.1', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [{ k: 'data', target: 'zero', size: 10, endStream: false, padding: undefined }] }],
  ['DATA on an idle stream', { section: '5.1', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [{ k: 'data', target: 'idle', size: 10, endStream: false, padding: undefined }] }],
  ['HEADERS on an even stream', { section: '5.1.1', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ stream: 'even' })] }],
  ['HEADERS on stream 0', { section: '6.2', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ stream: 'zero' })] }],
  ['RST_STREAM on an idle stream', { section: '6.4', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [{ k: 'rst', target: 'idle', code: 0, count: 1 }] }],
  ['RST_STREAM on stream 0', { section: '6.4', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [{ k: 'rst', target: 'zero', code: 0, count: 1 }] }],
  ['a frame inside a header block', { section: '6.10', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ unterminated: true }), { k: 'ping', count: 1, length: 8, stream: 0, ack: false }] }],
  ['PUSH_PROMISE from a client', { section: '8.4', level: 'connection', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp(), { k: 'pushPromise' }] }],
  ['a frame larger than SETTINGS_MAX_FRAME_SIZE', { section: '4.2', level: 'connection', code: ErrorCode.FRAME_SIZE_ERROR, ops: [{ k: 'oversized', type: FrameType.SETTINGS, over: 2 }] }],
  ['a DATA frame larger than SETTINGS_MAX_FRAME_SIZE', { section: '4.2', level: 'connection', code: ErrorCode.FRAME_SIZE_ERROR, ops: [connectOp(), { k: 'oversized', type: FrameType.DATA, over: 1 }] }],
  ['an undecodable header block', { section: '4.3', level: 'connection', code: ErrorCode.COMPRESSION_ERROR, ops: [{ k: 'hpack', bytes: Buffer.of(0xff, 0xff, 0xff, 0xff, 0xff, 0x7f), endHeaders: true }] }],
  ['a stream depending on itself', { section: '5.3.1', level: 'stream', code: ErrorCode.PROTOCOL_ERROR, mayIgnore: true, ops: [{ k: 'priority', target: 'idle', dependency: 'self', weight: 1 }] }],
  ['an uppercase header name', { section: '8.2.1', level: 'stream', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ extra: [['X-Upper', 'a']] })] }],
  ['a header name with a space', { section: '8.2.1', level: 'stream', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ extra: [['bad name', 'a']] })] }],
  ['a header value with CR LF', { section: '8.2.1', level: 'stream', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ extra: [['x-a', 'a\r\nb']] })] }],
  ['a header value with NUL', { section: '8.2.1', level: 'stream', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ extra: [['x-a', 'a\u0000b']] })] }],
  ['a connection-specific header field', { section: '8.2.2', level: 'stream', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ extra: [['connection', 'keep-alive']] })] }],
  ['CONNECT with :path', { section: '8.5', level: 'stream', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ pseudo: [[':path', '/']] })] }],
  ['CONNECT without :authority', { section: '8.5', level: 'stream', code: ErrorCode.PROTOCOL_ERROR, ops: [connectOp({ omitAuthority: true })] }],
]

/** Checks an outcome against an RFC expectation; returns what went wrong, or undefined. */
export function checkRfc(expected: RfcExpectation, outcome: SequenceOutcome): string | undefined {
  const goaway = outcome.goaways[0]
  if (expected.level === 'connection') {
    if (goaway === undefined) return `expected GOAWAY ${expected.code}, got none (resets: ${JSON.stringify(outcome.resets)})`
    return goaway.code === expected.code ? undefined : `expected GOAWAY ${expected.code}, got GOAWAY ${goaway.code}`
  }
  const reset = outcome.resets.find((r) => r.code !== ErrorCode.NO_ERROR && r.code !== ErrorCode.CANCEL)
  if (reset?.code === expected.code || goaway?.code === expected.code) return undefined
  if (expected.mayIgnore === true && reset === undefined && goaway === undefined) return undefined
  return `expected RST_STREAM (or GOAWAY) ${expected.code}, got resets ${JSON.stringify(outcome.resets)}, goaways ${JSON.stringify(outcome.goaways)}`
}

