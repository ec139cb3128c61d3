import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { tlsClientOptions } from '@ambientkit/identity'
import { checkProperty, fuzzSequences, fuzzTimeout } from '../../../test/support/fuzz'
import { createTestMesh, type TestMesh } from './interop/support'
import { runSequence, type Op } from './support/h2-fuzz'
import { startServerProcess, type ServerProcess } from './support/hbone-fuzz-process'
import { dataPaths } from './support/native'

// The two data paths must show decide() the same request for the same
// frames: whatever the headers, a policy or hook cannot tell them apart.

const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/api'
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/frontend'
const both = dataPaths('HBONE data paths compared').length === 2

const TOKEN = [...'abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&\'*+^`|~']
/** Fields Node keeps once (dropping repeats) or joins otherwise than with ", ", which the native path now reads the same way. */
const NODE_SPECIAL = new Set([
  'access-control-allow-credentials', 'access-control-max-age', 'access-control-request-method', 'age', 'authorization',
  'content-encoding', 'content-language', 'content-length', 'content-location', 'content-md5', 'content-range', 'content-type',
  'date', 'dnt', 'etag', 'expires', 'from', 'host', 'if-match', 'if-modified-since', 'if-none-match', 'if-range',
  'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'range', 'referer', 'retry-after',
  'tk', 'upgrade-insecure-requests', 'user-agent', 'x-content-type-options', 'cookie', 'set-cookie', 'constructor',
])
const nameArb = fc
  .oneof(fc.constantFrom('x-a', 'x-b', 'baggage', 'traceparent', 'forwarded', 'tracestate'), fc.string({ unit: fc.constantFrom(...TOKEN), minLength: 1, maxLength: 10 }))
  .filter((name) => !NODE_SPECIAL.has(name))
// RFC 9113 §8.2.1: no CR, LF or NUL, no whitespace at either end.
const valueArb = fc.string({ unit: fc.constantFrom(...'abc ,;="\t'), maxLength: 12 }).map((v) => v.trim())

const request = (extra: ReadonlyArray<readonly [string, string]>): Op[] => [
  { k: 'connect', destination: 'deny', method: 'CONNECT', omitAuthority: false, pseudo: [], extra, endStream: false, fragment: 0, unterminated: false, priority: false, padding: undefined, stream: 'next', send: 0 },
]

;(both ? describe : describe.skip)('HBONE data paths compared', () => {
  let mesh: TestMesh
  let servers: ServerProcess[]
  let tls: Awaited<ReturnType<typeof tlsClientOptions>>

  beforeAll(async () => {
    mesh = await createTestMesh()
    servers = await Promise.all((['node', 'native'] as const).map((path) => startServerProcess(mesh, path, SERVER_ID, 50)))
    tls = await tlsClientOptions({ manager: mesh.manager, id: CLIENT_ID, expectedPeers: [SERVER_ID] })
  })

  afterAll(async () => {
    await Promise.all(servers?.map((s) => s.stop()) ?? [])
    await mesh?.close()
  })

  const views = async (extra: ReadonlyArray<readonly [string, string]>): Promise<unknown[]> => {
    const seen: unknown[] = []
    for (const server of servers) {
      await runSequence(server.target, tls, request(extra), 10_000)
      seen.push(await server.requests())
    }
    return seen
  }

  // Regression native-inherited-header-names: the native path built the headers on a plain object,
  // so a header named after an Object.prototype property reached decide() as "function Object() { [native code] }, x".
  it('shows decide() a header named constructor as sent', async () => {
    const [node, native] = await views([['constructor', 'x']])
    expect(native).toEqual(node)
  })

  // Regression native-duplicate-singleton-headers: a repeated field Node keeps once, such as
  // user-agent, reached decide() joined ("a, b") on the native path. Found by the long run.
  it('shows decide() a repeated user-agent as Node does', async () => {
    const [node, native] = await views([['user-agent', 'a'], ['user-agent', 'b']])
    expect(native).toEqual(node)
  })

  it('shows decide() the same request on both paths, whatever the headers', async () => {
    const extra = fc.array(fc.tuple(nameArb, valueArb), { maxLength: 6 })
    await checkProperty('proxy: HBONE server, both data paths (decide view)', fc.asyncProperty(extra, async (headers) => {
      const [node, native] = await views(headers)
      expect(native).toEqual(node)
    }), 30, { numRuns: fuzzSequences(30) })
  }, fuzzTimeout(60_000))
})
