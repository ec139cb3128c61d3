import type { Socket } from 'node:net'

/**
 * Splits a TCP byte stream into DNS messages, each preceded by its length
 * in two bytes (RFC 1035 §4.2.2). It holds at most one incomplete message
 * (65,535 bytes and its prefix) between chunks.
 */
export class TcpMessageReader {
  #pending: Buffer = Buffer.alloc(0)

  /** The messages `chunk` completes, in order. */
  push(chunk: Buffer): Buffer[] {
    let data = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk])
    const messages: Buffer[] = []
    while (data.length >= 2) {
      const length = data.readUInt16BE(0)
      if (data.length < 2 + length) break
      messages.push(data.subarray(2, 2 + length))
      data = data.subarray(2 + length)
    }
    // A copy, so that a small remainder does not keep a large chunk alive.
    this.#pending = Buffer.from(data)
    return messages
  }

  /** Bytes of an incomplete message held. */
  get buffered(): number {
    return this.#pending.length
  }
}

/** Writes one message with its two-byte length; false when the socket's buffer is full (wait for `'drain'`). */
export function writeTcpMessage(socket: Socket, message: Buffer): boolean {
  const prefix = Buffer.allocUnsafe(2)
  prefix.writeUInt16BE(message.length)
  return socket.write(Buffer.concat([prefix, message]))
}
