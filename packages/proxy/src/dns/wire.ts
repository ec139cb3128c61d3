import dnsPacket from 'dns-packet'
import type { Answer, OptAnswer, Packet, Question } from 'dns-packet'

/** RFC 1035 §4.1.1 header fields this proxy reads or writes by number. */
export const HEADER_BYTES = 12
const QR = 1 << 15
const OPCODE_MASK = 0xf << 11
const TC = dnsPacket.TRUNCATED_RESPONSE

/** Response codes (RFC 1035 §4.1.1, RFC 6891 §9 for BADVERS). */
export const Rcode = { NoError: 0, FormErr: 1, ServFail: 2, NotImp: 4 } as const
const BADVERS = 16

/** The largest UDP response to a query without EDNS (RFC 1035 §4.2.1). */
export const CLASSIC_UDP_LIMIT = 512
/** What this proxy advertises and accepts as an EDNS UDP size: the DNS Flag Day 2020 value. */
export const EDNS_UDP_SIZE = 1232

/** The OPT pseudo-record of a message (RFC 6891 §6.1), if it has one. */
export function optOf(packet: Packet): OptAnswer | undefined {
  return packet.additionals?.find((a): a is OptAnswer => a.type === 'OPT')
}

/** The largest UDP response the client of `query` takes: its EDNS size, at least 512 (RFC 6891 §6.2.5). */
export function udpLimit(query: Packet): number {
  return Math.max(CLASSIC_UDP_LIMIT, optOf(query)?.udpPayloadSize ?? CLASSIC_UDP_LIMIT)
}

/** Whether a raw message is a response (QR set); `undefined` when it has no header. */
export function isResponse(message: Buffer): boolean | undefined {
  return message.length < HEADER_BYTES ? undefined : (message.readUInt16BE(2) & QR) !== 0
}

/** Whether a raw response has TC set: the answer did not fit and must be asked again over TCP. */
export function isTruncated(message: Buffer): boolean {
  return message.length >= HEADER_BYTES && (message.readUInt16BE(2) & TC) !== 0
}

/** A copy of `message` with ID `id`. */
export function withId(message: Buffer, id: number): Buffer {
  const copy = Buffer.from(message)
  copy.writeUInt16BE(id, 0)
  return copy
}

/**
 * The end of the question section of a raw message, when it can be read
 * without decompressing: `undefined` when a question name is compressed or
 * runs past the end. A query's questions come first in the message, so a
 * well-formed one never compresses them.
 */
function questionsEnd(message: Buffer): number | undefined {
  const count = message.readUInt16BE(4)
  let offset = HEADER_BYTES
  for (let i = 0; i < count; i++) {
    for (;;) {
      if (offset >= message.length) return undefined
      const length = message[offset]!
      if (length === 0) break
      if ((length & 0xc0) !== 0) return undefined
      offset += length + 1
    }
    offset += 1 + 4
    if (offset > message.length) return undefined
  }
  return offset
}

/**
 * Whether `response` answers `query`: same ID, QR set, and the same
 * question section, byte for byte (a resolver echoes it, case included).
 * What an upstream sends otherwise is ignored: a late answer to an earlier
 * query, or a spoofed one.
 */
export function answersQuery(query: Buffer, response: Buffer): boolean {
  if (response.length < HEADER_BYTES || response.readUInt16BE(0) !== query.readUInt16BE(0) || (response.readUInt16BE(2) & QR) === 0) return false
  if (response.readUInt16BE(4) !== query.readUInt16BE(4)) return false
  const end = questionsEnd(query)
  return end !== undefined && response.length >= end && response.subarray(HEADER_BYTES, end).equals(query.subarray(HEADER_BYTES, end))
}

/**
 * Whether the decoded question is exactly what the raw query carries.
 * dns-packet reads a label as text, so a label with a dot or bytes that are
 * not UTF-8 would be answered under another name: such a query is left to
 * the upstream resolver, which reads the bytes.
 */
export function questionRoundTrips(message: Buffer, question: Question): boolean {
  const encoded = dnsPacket.encode({ questions: [question] }).subarray(HEADER_BYTES)
  return message.length >= HEADER_BYTES + encoded.length && encoded.equals(message.subarray(HEADER_BYTES, HEADER_BYTES + encoded.length))
}

/** Flags of a response to a query with `queryFlags`: QR, its opcode and RD, RA (this proxy recurses by forwarding), `extra`, `rcode`. */
function responseFlags(queryFlags: number, rcode: number, extra = 0): number {
  return (queryFlags & OPCODE_MASK) | (queryFlags & dnsPacket.RECURSION_DESIRED) | dnsPacket.RECURSION_AVAILABLE | extra | (rcode & 0xf)
}

/**
 * A header-only error response to a raw query whose body cannot be read:
 * its ID, opcode and RD, no sections (RFC 1035 §4.1.1 allows FORMERR
 * without the question it could not parse).
 */
export function headerOnlyResponse(message: Buffer, rcode: number): Buffer {
  const id = message.readUInt16BE(0)
  const flags = message.readUInt16BE(2)
  return dnsPacket.encode({ id, type: 'response', flags: responseFlags(flags, rcode) })
}

/** Our OPT for a response to a query that had one (RFC 6891 §7), with the extended bits of `rcode`. */
function responseOpt(query: Packet, rcode: number): Answer[] {
  if (optOf(query) === undefined) return []
  return [{ type: 'OPT', name: '.', udpPayloadSize: EDNS_UDP_SIZE, extendedRcode: rcode >> 4, ednsVersion: 0, flags: 0, flag_do: false, options: [] }]
}

/** What a local answer says: its records and whether this proxy is the authority (it is for mesh names). */
export interface LocalAnswer {
  readonly rcode: number
  readonly answers?: readonly Answer[]
  readonly authoritative?: boolean
}

/**
 * A response to a decoded `query`: its question and EDNS echoed, with
 * `answer`'s records. Over UDP (`limit` set) a response that does not fit
 * the client's size is sent truncated (TC, no records) so it asks again
 * over TCP (RFC 2181 §9).
 */
export function buildResponse(query: Packet, answer: LocalAnswer, limit?: number): Buffer {
  const flags = responseFlags(query.flags ?? 0, answer.rcode, answer.authoritative === true ? dnsPacket.AUTHORITATIVE_ANSWER : 0)
  const full = dnsPacket.encode({
    id: query.id,
    type: 'response',
    flags,
    questions: query.questions,
    answers: [...(answer.answers ?? [])],
    additionals: responseOpt(query, answer.rcode),
  })
  if (limit === undefined || full.length <= limit) return full
  return truncatedResponse(query)
}

/** An empty, truncated response to `query` (TC set): the client asks again over TCP. */
export function truncatedResponse(query: Packet): Buffer {
  return dnsPacket.encode({
    id: query.id,
    type: 'response',
    flags: responseFlags(query.flags ?? 0, Rcode.NoError, TC),
    questions: query.questions,
    additionals: responseOpt(query, Rcode.NoError),
  })
}

/** The EDNS version check of RFC 6891 §6.1.3: a query with a version above 0 gets BADVERS. */
export function unsupportedEdnsVersion(query: Packet): boolean {
  return (optOf(query)?.ednsVersion ?? 0) > 0
}

/** Its response: BADVERS, which needs EDNS's extended RCODE bits. */
export function badVersionResponse(query: Packet): Buffer {
  return buildResponse(query, { rcode: BADVERS })
}

/** Whether the opcode of a decoded query is QUERY, the only one this proxy serves. */
export function isStandardQuery(query: Packet): boolean {
  return ((query.flags ?? 0) & OPCODE_MASK) === 0
}

export { dnsPacket }
export type { Answer, Packet, Question }
