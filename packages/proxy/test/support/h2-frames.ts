// HTTP/2 frames and HPACK, written by hand for the fuzzer (RFC 9113 §4, §6;
// RFC 7541): it must be able to send what no conforming library would.

/** RFC 9113 §6 frame types. */
export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const

/** RFC 9113 §6 flags. */
export const Flag = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 } as const

/** RFC 9113 §7 error codes. */
export const ErrorCode = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  SETTINGS_TIMEOUT: 0x4,
  STREAM_CLOSED: 0x5,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  CONNECT_ERROR: 0xa,
  ENHANCE_YOUR_CALM: 0xb,
  INADEQUATE_SECURITY: 0xc,
  HTTP_1_1_REQUIRED: 0xd,
} as const

export const errorName = (code: number): string => Object.entries(ErrorCode).find(([, c]) => c === code)?.[0] ?? `0x${code.toString(16)}`

/** RFC 9113 §6.5.2 setting identifiers. */
export const Setting = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
} as const

/** RFC 9113 §3.4: the client connection preface. */
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1')

/** One frame (RFC 9113 §4.1). `length` overrides the length field, to lie about it. */
export function frame(type: number, flags: number, stream: number, payload: Uint8Array = Buffer.alloc(0), length = payload.length): Buffer {
  const header = Buffer.alloc(9)
  header.writeUIntBE(length & 0xffffff, 0, 3)
  header[3] = type
  header[4] = flags
  header.writeUInt32BE(stream >>> 0, 5)
  return Buffer.concat([header, payload])
}

export function settings(params: ReadonlyArray<readonly [number, number]>, flags = 0, stream = 0): Buffer {
  const payload = Buffer.alloc(params.length * 6)
  params.forEach(([id, value], i) => {
    payload.writeUInt16BE(id & 0xffff, i * 6)
    payload.writeUInt32BE(value >>> 0, i * 6 + 2)
  })
  return frame(FrameType.SETTINGS, flags, stream, payload)
}

export const u32 = (value: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(value >>> 0)
  return b
}

export const windowUpdate = (stream: number, increment: number): Buffer => frame(FrameType.WINDOW_UPDATE, 0, stream, u32(increment))
export const rstStream = (stream: number, code: number): Buffer => frame(FrameType.RST_STREAM, 0, stream, u32(code))
export const ping = (data: Uint8Array, flags = 0, stream = 0): Buffer => frame(FrameType.PING, flags, stream, data)
export const goaway = (lastStream: number, code: number): Buffer => frame(FrameType.GOAWAY, 0, 0, Buffer.concat([u32(lastStream), u32(code)]))

/** RFC 7541 §5.1: an integer with an N-bit prefix, the first byte's high bits set to `high`. */
export function hpackInteger(value: number, prefixBits: number, high = 0): Buffer {
  const max = (1 << prefixBits) - 1
  if (value < max) return Buffer.of(high | value)
  const bytes = [high | max]
  let rest = value - max
  while (rest >= 128) {
    bytes.push((rest % 128) + 128)
    rest = Math.floor(rest / 128)
  }
  bytes.push(rest)
  return Buffer.from(bytes)
}

/** RFC 7541 §5.2: a string literal, not Huffman-coded. */
export const hpackString = (text: string | Uint8Array): Buffer => {
  const bytes = typeof text === 'string' ? Buffer.from(text, 'latin1') : Buffer.from(text)
  return Buffer.concat([hpackInteger(bytes.length, 7), bytes])
}

/** RFC 7541 §6.2.2: literal header field without indexing, new name. Touches no table, so any order is valid. */
export function hpackLiteral(name: string, value: string | Uint8Array): Buffer {
  return Buffer.concat([Buffer.of(0x00), hpackString(name), hpackString(value)])
}

export function headerBlock(headers: ReadonlyArray<readonly [string, string]>): Buffer {
  return Buffer.concat(headers.map(([name, value]) => hpackLiteral(name, value)))
}

/** A frame read back from the server. */
export interface ReadFrame {
  readonly type: number
  readonly flags: number
  readonly stream: number
  readonly payload: Buffer
}

/** Splits a byte stream into frames; feed it chunks, it calls `onFrame` for each whole frame. */
export function frameReader(onFrame: (frame: ReadFrame) => void): (chunk: Buffer) => void {
  let pending: Buffer = Buffer.alloc(0)
  return (chunk) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
    while (pending.length >= 9) {
      const length = pending.readUIntBE(0, 3)
      if (pending.length < 9 + length) break
      onFrame({ type: pending[3]!, flags: pending[4]!, stream: pending.readUInt32BE(5) & 0x7fffffff, payload: pending.subarray(9, 9 + length) })
      pending = pending.subarray(9 + length)
    }
  }
}
