import { once } from 'node:events'
import http2, { constants } from 'node:http2'
import { connect as netConnect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { isAmbientError } from '@ambientkit/core'
import { attachTlsServer, tlsClientOptions } from '@ambientkit/identity'
import {
  createHboneClient,
  createHboneServer,
  resetTunnel,
  spliceTunnel,
  type HboneClient,
  type HboneDecision,
  type HboneRequest,
  type HboneServer,
  type HboneServerOptions,
  type HboneTunnelRecord,
} from '@ambientkit/proxy'
import { closed, createTestMesh, echoStream, readAll, startEchoServer, startScriptedHttp2Server, type TestMesh } from './interop/support'

const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/api'
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/frontend'

let mesh: TestMesh
let echo: Awaited<ReturnType<typeof startEchoServer>>

beforeAll(async () => {
  mesh = await createTestMesh()
  echo = await startEchoServer()
})

afterAll(async () => {
  await echo.close()
  await mesh.close()
})

const closers: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close()
})

interface Harness {
  server: HboneServer
  client: HboneClient
  via: string
  records: HboneTunnelRecord[]
  requests: HboneRequest[]
  /** Resolves with the next finished tunnel record. */
  nextRecord(): Promise<HboneTunnelRecord>
}

async function harness(overrides: Partial<HboneServerOptions> = {}, host = '127.0.0.1'): Promise<Harness> {
  const records: HboneTunnelRecord[] = []
  const requests: HboneRequest[] = []
  const waiters: Array<(record: HboneTunnelRecord) => void> = []
  const server = createHboneServer({
    tls: await mesh.serverTls(SERVER_ID),
    decide: (request): HboneDecision => {
      requests.push(request)
      return { action: 'serve' }
    },
    onTunnel: (record) => {
      records.push(record)
      waiters.shift()?.(record)
    },
    ...overrides,
  })
  const bound = await server.listen(0, host)
  const client = createHboneClient({ tls: mesh.clientTls(CLIENT_ID) })
  closers.push(() => server.close(), () => client.close())
  const via = bound.family === 6 ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`
  return {
    server,
    client,
    via,
    records,
    requests,
    nextRecord: () => new Promise((resolve) => waiters.push(resolve)),
  }
}

describe('HBONE client and server', () => {
  it('tunnels bytes to the destination and back, reporting the peer identity', async () => {
    const opened: HboneRequest[] = []
    const h = await harness({ onTunnelOpen: (request) => opened.push(request) })
    const record = h.nextRecord()
    const tunnel = await h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
    tunnel.end('hello through HBONE')
    expect((await readAll(tunnel)).toString()).toBe('hello through HBONE')
    const done = await record
    expect(done).toMatchObject({
      peerIdentity: CLIENT_ID,
      status: 200,
      outcome: 'closed',
      destination: { address: '127.0.0.1', port: echo.port, family: 4 },
      bytesReceived: 19,
      bytesSent: 19,
    })
    expect(h.requests[0]!.peerAddress.address).toBe('127.0.0.1')
    expect(opened).toEqual([h.requests[0]])
  })

  it('keeps half-close both ways: client FIN reaches upstream, which can still answer', async () => {
    const upstream = await startServer((socket) => {
      const chunks: Buffer[] = []
      socket.on('data', (chunk: Buffer) => chunks.push(chunk))
      socket.on('end', () => socket.end(`got ${Buffer.concat(chunks).toString()}`))
    })
    const h = await harness()
    const record = h.nextRecord()
    const tunnel = await h.client.connect(`127.0.0.1:${upstream.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
    tunnel.end('ping')
    expect((await readAll(tunnel)).toString()).toBe('got ping')
    expect((await record).outcome).toBe('closed')
  })

  it('keeps half-close both ways: upstream FIN reaches the client, which can still send', async () => {
    const received = deferred<string>()
    const upstream = await startServer((socket) => {
      const chunks: Buffer[] = []
      socket.on('data', (chunk: Buffer) => chunks.push(chunk))
      socket.on('end', () => received.resolve(Buffer.concat(chunks).toString()))
      socket.end('hello first')
    })
    const h = await harness()
    const tunnel = await h.client.connect(`127.0.0.1:${upstream.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
    expect((await readAll(tunnel)).toString()).toBe('hello first')
    const tunnelClosed = closed(tunnel)
    tunnel.end('late reply')
    expect(await received.promise).toBe('late reply')
    await tunnelClosed
    expect(tunnel.rstCode).toBe(constants.NGHTTP2_NO_ERROR)
  })

  it('resets the upstream connection when the client resets the tunnel', async () => {
    const upstreamClosed = deferred<{ error?: string }>()
    const accepted = deferred<void>()
    const upstream = await startServer((socket) => {
      let error: string | undefined
      socket.on('error', (err: NodeJS.ErrnoException) => (error = err.code))
      socket.on('close', () => upstreamClosed.resolve({ error }))
      // Reading is how a socket notices the peer's RST.
      socket.resume()
      accepted.resolve()
    })
    const h = await harness()
    const record = h.nextRecord()
    const tunnel = await h.client.connect(`127.0.0.1:${upstream.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
    await accepted.promise
    resetTunnel(tunnel)
    expect(await upstreamClosed.promise).toEqual({ error: 'ECONNRESET' })
    expect((await record).outcome).toBe('stream-reset')
  })

  it('resets the tunnel with CONNECT_ERROR when the upstream connection is reset', async () => {
    const upstream = await startServer((socket) => {
      socket.once('data', () => socket.resetAndDestroy())
    })
    const h = await harness()
    const record = h.nextRecord()
    const tunnel = await h.client.connect(`127.0.0.1:${upstream.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
    tunnel.on('error', () => {})
    tunnel.write('trigger')
    await closed(tunnel)
    expect(tunnel.rstCode).toBe(constants.NGHTTP2_CONNECT_ERROR)
    expect((await record).outcome).toBe('socket-reset')
  })

  it('splices an application socket with a tunnel, keeping half-close and resets', async () => {
    const h = await harness()
    // The application side: a socket pair through a local listener, as the workload proxy's 15001 would see it.
    const app = await startServer(async (socket) => {
      const tunnel = await h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
      const result = await spliceTunnel(socket, tunnel)
      splices.resolve(result)
    })
    const splices = deferred<Awaited<ReturnType<typeof spliceTunnel>>>()
    const socket = netConnect({ host: '127.0.0.1', port: app.port, allowHalfOpen: true })
    socket.end('round trip')
    expect((await readAll(socket)).toString()).toBe('round trip')
    const result = await splices.promise
    expect(result).toMatchObject({ outcome: 'closed', socketBytesRead: 10, socketBytesWritten: 10 })
  })

  it('stops reading the application socket while the destination does not read, and loses nothing', async () => {
    const h = await harness()
    const sinks = deferred<Socket>()
    // The destination reads nothing until told to: its socket has no reader yet.
    const upstream = await startServer((socket) => sinks.resolve(socket))
    const accepted = deferred<Socket>()
    const splices = deferred<Awaited<ReturnType<typeof spliceTunnel>>>()
    const app = await startServer(async (socket) => {
      accepted.resolve(socket)
      const tunnel = await h.client.connect(`127.0.0.1:${upstream.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
      splices.resolve(await spliceTunnel(socket, tunnel))
    })
    const size = 64 * 1024 * 1024
    const client = netConnect({ host: '127.0.0.1', port: app.port, allowHalfOpen: true })
    client.end(Buffer.alloc(size, 0x62))
    const appSocket = await accepted.promise
    // Flow control reaches back to the application socket: the splice stops reading it rather than buffering everything.
    await vi.waitFor(() => expect(appSocket.isPaused()).toBe(true), { timeout: 10_000 })
    expect(appSocket.bytesRead).toBeLessThan(size / 2)
    const sink = await sinks.promise
    let received = 0
    sink.on('data', (chunk: Buffer) => (received += chunk.length))
    await once(sink, 'end')
    expect(received).toBe(size)
    sink.end()
    client.resume()
    expect(await splices.promise).toMatchObject({ outcome: 'closed', socketBytesRead: size, socketBytesWritten: 0 })
  })
})

describe('HBONE resets end to end', () => {
  it("an application socket's RST reaches the destination as a RST (client splice → server splice)", async () => {
    const h = await harness()
    const upstreamClosed = deferred<string | undefined>()
    const upstreamGotData = deferred<void>()
    const upstream = await startServer((socket) => {
      let code: string | undefined
      socket.on('error', (err: NodeJS.ErrnoException) => (code = err.code))
      socket.on('close', () => upstreamClosed.resolve(code))
      socket.on('data', () => upstreamGotData.resolve())
    })
    const splices = deferred<Awaited<ReturnType<typeof spliceTunnel>>>()
    const app = await startServer(async (socket) => {
      const tunnel = await h.client.connect(`127.0.0.1:${upstream.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
      splices.resolve(await spliceTunnel(socket, tunnel))
    })
    const socket = netConnect({ host: '127.0.0.1', port: app.port })
    socket.on('error', () => {})
    socket.write('x')
    await upstreamGotData.promise
    socket.resetAndDestroy()
    expect(await upstreamClosed.promise).toBe('ECONNRESET')
    expect((await splices.promise).outcome).toBe('socket-reset')
  })

  it('closing the server resets open tunnels, their application sockets, and the client drops the session', async () => {
    const h = await harness()
    const splices = deferred<Awaited<ReturnType<typeof spliceTunnel>>>()
    const app = await startServer(async (socket) => {
      const tunnel = await h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
      splices.resolve(await spliceTunnel(socket, tunnel))
    })
    const socket = netConnect({ host: '127.0.0.1', port: app.port })
    const appError = new Promise<string | undefined>((resolve) => {
      let code: string | undefined
      socket.on('error', (err: NodeJS.ErrnoException) => (code = err.code))
      socket.on('close', () => resolve(code))
    })
    socket.write('open')
    await once(socket, 'data')
    await h.server.close()
    expect((await splices.promise).outcome).toBe('stream-reset')
    expect(await appError).toBe('ECONNRESET')
    await vi.waitFor(() => expect(h.client.stats()).toEqual([]))
    expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 })
  })

  it.each(['server', 'client'] as const)(
    "ends sessions on the %s's FIN even when the socket factory and the listener allow half-open sockets",
    async (side) => {
      const server = createHboneServer({ tls: await mesh.serverTls(SERVER_ID), decide: () => ({ action: 'serve' }) })
      const accepted: Socket[] = []
      const dialed: Socket[] = []
      const listener = createServer({ allowHalfOpen: true }, (socket) => {
        accepted.push(socket)
        server.handle(socket)
      })
      listener.listen(0, '127.0.0.1')
      await once(listener, 'listening')
      closers.push(() => new Promise<void>((resolve) => listener.close(() => resolve())), () => server.close())
      const client = createHboneClient({
        tls: mesh.clientTls(CLIENT_ID),
        socketFactory: async (address) => {
          const socket = netConnect({ host: address.address, port: address.port, allowHalfOpen: true })
          dialed.push(socket)
          await once(socket, 'connect')
          return socket
        },
      })
      closers.push(() => client.close())
      const tunnel = await client.connect(`127.0.0.1:${echo.port}`, {
        via: `127.0.0.1:${(listener.address() as AddressInfo).port}`,
        expectedIdentities: [SERVER_ID],
      })
      tunnel.on('error', () => {})
      const gone = closed(tunnel)
      // One side's TCP connection half-closes, as a peer going away gracefully does.
      ;(side === 'server' ? accepted : dialed)[0]!.end()
      await gone
      await vi.waitFor(() => expect(client.stats()).toEqual([]))
      await vi.waitFor(() => expect(server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 }))
    },
  )

  it('drain sends GOAWAY, lets open tunnels finish, then closes', async () => {
    const h = await harness()
    const tunnel = await h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
    let drained = false
    const draining = h.server.drain().then(() => (drained = true))
    // The client retires the session on GOAWAY, so new tunnels cannot land on it.
    await vi.waitFor(() => expect(h.client.stats()).toEqual([]))
    const refused = await h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] }).catch((e: unknown) => e)
    expect(isAmbientError(refused, 'ERR_AMBIENT_HBONE_CONNECT_FAILED')).toBe(true)
    // The open tunnel still carries bytes both ways.
    tunnel.write('still ')
    await once(tunnel, 'data')
    expect(drained).toBe(false)
    tunnel.end('open')
    expect((await readAll(tunnel)).toString()).toBe('open')
    await draining
    expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 })
  })

  it('reports a client that does not negotiate h2 as a handshake failure', async () => {
    const failures = deferred<string>()
    const h = await harness({ onHandshakeFailure: (failure) => failures.resolve(failure.reason) })
    const options = await tlsClientOptions({ manager: mesh.manager, id: CLIENT_ID, expectedPeers: [SERVER_ID] })
    const [host, port] = [h.via.slice(0, h.via.lastIndexOf(':')), Number(h.via.slice(h.via.lastIndexOf(':') + 1))]
    const socket = tlsConnect({ ...options, host, port })
    socket.on('error', () => {})
    expect(await failures.promise).toBe('alpn')
    await closed(socket)
    expect(h.records).toEqual([])
  })
})

describe('HBONE server answers', () => {
  const connectStatus = async (h: Harness, destination: string): Promise<unknown> => {
    try {
      await h.client.connect(destination, { via: h.via, expectedIdentities: [SERVER_ID] })
      return 200
    } catch (err) {
      if (isAmbientError(err, 'ERR_AMBIENT_HBONE_STATUS')) return err.details.status
      throw err
    }
  }

  it.each([
    ['not-served', 400, { action: 'not-served', reason: 'not-served' }],
    ['unknown', 503, { action: 'unknown', reason: 'unknown-destination' }],
    ['deny', 401, { action: 'deny', reason: 'denied', policy: 'shop/deny-all' }],
  ] as const)('%s → %i', async (_name, status, decision) => {
    const h = await harness({ decide: () => decision })
    const record = h.nextRecord()
    expect(await connectStatus(h, `127.0.0.1:${echo.port}`)).toBe(status)
    expect(await record).toMatchObject({ status, outcome: 'rejected', reason: decision.reason })
    if (decision.action === 'deny') expect(h.records[0]!.policy).toBe('shop/deny-all')
  })

  it('answers 503 when the upstream connect fails, and 500 when decide throws', async () => {
    const closed = await startServer(() => {})
    const port = closed.port
    await closed.close()
    const h = await harness()
    const record = h.nextRecord()
    expect(await connectStatus(h, `127.0.0.1:${port}`)).toBe(503)
    expect(await record).toMatchObject({ status: 503, reason: 'upstream-connect-failed' })
    const failing = await harness({
      decide: () => {
        throw new Error('registry unavailable')
      },
    })
    expect(await connectStatus(failing, `127.0.0.1:${echo.port}`)).toBe(500)
  })

  it('answers 200 only after the upstream connect succeeded', async () => {
    const events: string[] = []
    const release = deferred<void>()
    const h = await harness({
      connect: async (destination) => {
        events.push('connector called')
        await release.promise
        const socket = netConnect({ host: destination.address, port: destination.port, allowHalfOpen: true })
        await once(socket, 'connect')
        events.push('upstream connected')
        return socket
      },
    })
    const pending = h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] }).then((tunnel) => {
      events.push('client got 200')
      return tunnel
    })
    await vi.waitFor(() => expect(events).toEqual(['connector called']))
    release.resolve()
    const tunnel = await pending
    expect(events).toEqual(['connector called', 'upstream connected', 'client got 200'])
    tunnel.end()
    await readAll(tunnel)
  })

  it('answers 400 to a request that is not CONNECT and to a malformed :authority', async () => {
    const h = await harness()
    const session = http2.connect(`https://${h.via}`, {
      ...(await tlsClientOptions({ manager: mesh.manager, id: CLIENT_ID, expectedPeers: [SERVER_ID] })),
      ALPNProtocols: ['h2'],
    })
    closers.push(async () => {
      session.destroy()
    })
    const status = async (headers: http2.OutgoingHttpHeaders): Promise<number> => {
      const stream = session.request(headers, { endStream: headers[':method'] !== 'CONNECT' })
      const [response] = (await once(stream, 'response')) as [http2.IncomingHttpHeaders]
      stream.close()
      return Number(response[':status'])
    }
    expect(await status({ ':method': 'GET', ':path': '/' })).toBe(400)
    for (const authority of ['example.com:80', '127.0.0.1', '::1:80', '127.0.0.1:0', '[::1]', '127.0.0.1:080']) {
      expect(await status({ ':method': 'CONNECT', ':authority': authority }), authority).toBe(400)
    }
    expect(h.records.map((r) => r.reason)).toEqual(['not-connect', ...Array(6).fill('bad-authority')])
    expect(h.requests).toEqual([])
  })

  it('passes baggage and traceparent, and forwarded only from trusted peers', async () => {
    const headers = { baggage: 'k=v', traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', forwarded: 'for=10.9.9.9' }
    const plain = await harness()
    const tunnel = await plain.client.connect(`127.0.0.1:${echo.port}`, { via: plain.via, expectedIdentities: [SERVER_ID], headers })
    tunnel.end()
    await readAll(tunnel)
    expect(plain.requests[0]).toMatchObject({ baggage: headers.baggage, traceparent: headers.traceparent, forwardedFor: undefined })
    expect(plain.requests[0]!.headers.forwarded).toBeUndefined()

    const trusting = await harness({ trustForwarded: (peer) => peer === CLIENT_ID })
    const second = await trusting.client.connect(`127.0.0.1:${echo.port}`, { via: trusting.via, expectedIdentities: [SERVER_ID], headers })
    second.end()
    await readAll(second)
    expect(trusting.requests[0]).toMatchObject({ forwardedFor: '10.9.9.9', headers: { forwarded: 'for=10.9.9.9' } })
  })
})

describe('HBONE client pooling', () => {
  const open = async (h: Harness, n: number): Promise<http2.ClientHttp2Stream[]> =>
    Promise.all(Array.from({ length: n }, () => h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })))
  const finish = async (tunnels: http2.ClientHttp2Stream[]): Promise<void> => {
    await Promise.all(tunnels.map((tunnel) => {
      tunnel.end()
      return readAll(tunnel)
    }))
  }

  it('shares one session between concurrent tunnels with the same key', async () => {
    const h = await harness()
    const tunnels = await open(h, 5)
    expect(h.client.stats()).toEqual([expect.objectContaining({ peerIdentity: SERVER_ID, streams: 5 })])
    expect(h.server.stats()).toMatchObject({ sessions: 1, tunnels: 5 })
    await finish(tunnels)
    await vi.waitFor(() => expect(h.client.stats()[0]!.streams).toBe(0))
    const again = await open(h, 1)
    expect(h.client.stats()).toHaveLength(1)
    expect(h.server.stats().sessions).toBe(1)
    await finish(again)
  })

  it('opens another session when one reaches maxStreamsPerSession', async () => {
    const h = await harness()
    const client = createHboneClient({ tls: mesh.clientTls(CLIENT_ID), maxStreamsPerSession: 2 })
    closers.push(() => client.close())
    const tunnels = await Promise.all(
      Array.from({ length: 5 }, () => client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })),
    )
    expect(client.stats().map((s) => s.streams).sort()).toEqual([1, 2, 2])
    expect(h.server.stats().sessions).toBe(3)
    await finish(tunnels)
  })

  it("respects the server's SETTINGS_MAX_CONCURRENT_STREAMS", async () => {
    const h = await harness({ maxConcurrentStreams: 1 })
    const tunnels = await open(h, 3)
    expect(h.client.stats().map((s) => s.streams)).toEqual([1, 1, 1])
    expect(h.server.stats().sessions).toBe(3)
    await finish(tunnels)
  })

  it('keys sessions by source identity and by expected identities', async () => {
    const h = await harness()
    const other = 'spiffe://cluster.local/ns/shop/sa/batch'
    const a = await h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
    const b = await h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID], identity: other })
    const c = await h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID, other] })
    expect(h.client.stats()).toHaveLength(3)
    await finish([a, b, c])
    expect(new Set(h.records.map((r) => r.peerIdentity))).toEqual(new Set([CLIENT_ID, other]))
  })

  it('releases idle sessions after idleTimeout, on both sides', async () => {
    const h = await harness()
    const client = createHboneClient({ tls: mesh.clientTls(CLIENT_ID), idleTimeout: 50 })
    closers.push(() => client.close())
    const tunnel = await client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
    await finish([tunnel])
    await vi.waitFor(() => {
      expect(client.stats()).toEqual([])
      expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 })
    })
  })

  it('sends HTTP/2 PINGs as keepalive', async () => {
    // A plain Node HTTP/2 server, so the test can watch the session's PING frames.
    const options = await mesh.serverTls(SERVER_ID)
    const server = http2.createSecureServer({ ...options, ALPNProtocols: ['h2'] })
    const binding = attachTlsServer(server, options)
    const pinged = deferred<void>()
    server.on('session', (session) => session.on('ping', () => pinged.resolve()))
    server.on('stream', (stream) => {
      stream.respond({ ':status': 200 })
      stream.pipe(stream)
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const client = createHboneClient({ tls: mesh.clientTls(CLIENT_ID), keepaliveInterval: 20 })
    closers.push(
      () => new Promise<void>((resolve) => {
        binding.close()
        server.close(() => resolve())
      }),
      () => client.close(),
    )
    const via = `127.0.0.1:${(server.address() as AddressInfo).port}`
    const tunnel = await client.connect(`127.0.0.1:${echo.port}`, { via, expectedIdentities: [SERVER_ID] })
    await pinged.promise
    await finish([tunnel])
  })
})

describe('HBONE CONNECTs the server did not process', () => {
  async function scripted(onStream: (stream: http2.ServerHttp2Stream, index: number) => void): Promise<{ client: HboneClient; via: string; sessions: Set<http2.ServerHttp2Session> }> {
    const server = await startScriptedHttp2Server(mesh, SERVER_ID, onStream)
    const client = createHboneClient({ tls: mesh.clientTls(CLIENT_ID) })
    closers.push(() => server.close(), () => client.close())
    return { client, via: `127.0.0.1:${server.port}`, sessions: server.sessions }
  }

  it('sends a CONNECT refused unprocessed (REFUSED_STREAM) once more, and the tunnel works', async () => {
    const { client, via } = await scripted((stream, index) => (index === 0 ? stream.close(http2.constants.NGHTTP2_REFUSED_STREAM) : echoStream(stream)))
    const tunnel = await client.connect(`127.0.0.1:${echo.port}`, { via, expectedIdentities: [SERVER_ID] })
    tunnel.end('after a refusal')
    expect((await readAll(tunnel)).toString()).toBe('after a refusal')
  })

  it('sends a CONNECT above the last stream of a GOAWAY on a new session (RFC 9113 §6.8)', async () => {
    const { client, via, sessions } = await scripted((stream, index) => (index === 1 ? stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, 1) : echoStream(stream)))
    const first = await client.connect(`127.0.0.1:${echo.port}`, { via, expectedIdentities: [SERVER_ID] })
    const tunnel = await client.connect(`127.0.0.1:${echo.port}`, { via, expectedIdentities: [SERVER_ID] })
    tunnel.end('on a new session')
    expect((await readAll(tunnel)).toString()).toBe('on a new session')
    expect(sessions.size).toBe(2)
    first.destroy()
  })

  it('gives up on a CONNECT refused twice, with a clear error', async () => {
    const { client, via } = await scripted((stream) => stream.close(http2.constants.NGHTTP2_REFUSED_STREAM))
    await expect(client.connect(`127.0.0.1:${echo.port}`, { via, expectedIdentities: [SERVER_ID] })).rejects.toMatchObject({
      code: 'ERR_AMBIENT_HBONE_STREAM',
      message: expect.stringMatching(/refused twice before any processing/),
    })
  })
})

describe('HBONE identity and failures', () => {
  it('fails with IDENTITY_MISMATCH when the server is not an expected identity, and pools nothing', async () => {
    const h = await harness()
    const err = await h.client
      .connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: ['spiffe://cluster.local/ns/shop/sa/other'] })
      .catch((e: unknown) => e)
    expect(isAmbientError(err, 'ERR_AMBIENT_HBONE_IDENTITY_MISMATCH')).toBe(true)
    expect((err as Error).message).toMatch(/spiffe:\/\/cluster.local\/ns\/shop\/sa\/api/)
    expect(h.client.stats()).toEqual([])
    await vi.waitFor(() => expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 }))
  })

  it('rejects clients from another trust domain at the handshake and reports it', async () => {
    const failures: string[] = []
    const h = await harness({ onHandshakeFailure: (failure) => failures.push(failure.reason) })
    const foreign = await createTestMesh('evil.example')
    closers.push(() => foreign.close())
    const client = createHboneClient({
      tls: async (_identity, { expectedIdentities }) => ({
        ...(await tlsClientOptions({ manager: foreign.manager, id: 'spiffe://evil.example/ns/x/sa/y', expectedPeers: expectedIdentities })),
        // Trust the real server so only the server's check of the client can fail.
        ca: [mesh.rootsPem, foreign.rootsPem],
        checkServerIdentity: () => undefined,
        secureContext: undefined,
        ...(await svidPem(foreign, 'spiffe://evil.example/ns/x/sa/y')),
      }),
    })
    closers.push(() => client.close())
    const err = await client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] }).catch((e: unknown) => e)
    expect(isAmbientError(err)).toBe(true)
    expect(['ERR_AMBIENT_HBONE_CONNECT_FAILED', 'ERR_AMBIENT_HBONE_STREAM']).toContain((err as { code: string }).code)
    await vi.waitFor(() => expect(failures.length).toBeGreaterThan(0))
    expect(h.records).toEqual([])
    await vi.waitFor(() => expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 }))
  })

  it('fails with CONNECT_FAILED when nothing listens at the HBONE peer', async () => {
    const closedPort = await startServer(() => {})
    await closedPort.close()
    const client = createHboneClient({ tls: mesh.clientTls(CLIENT_ID) })
    closers.push(() => client.close())
    const err = await client
      .connect(`127.0.0.1:${echo.port}`, { via: `127.0.0.1:${closedPort.port}`, expectedIdentities: [SERVER_ID] })
      .catch((e: unknown) => e)
    expect(isAmbientError(err, 'ERR_AMBIENT_HBONE_CONNECT_FAILED')).toBe(true)
    expect(client.stats()).toEqual([])
  })

  it('honours an abort signal and refuses bad arguments with clear errors', async () => {
    const h = await harness()
    const aborted = await h.client
      .connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID], signal: AbortSignal.abort() })
      .catch((e: unknown) => e)
    expect(isAmbientError(aborted, 'ERR_AMBIENT_ABORTED')).toBe(true)
    await expect(h.client.connect('example.com:80', { expectedIdentities: [SERVER_ID] })).rejects.toThrow(/destination: not an IPv4 address/)
    await expect(h.client.connect(`127.0.0.1:${echo.port}`, { expectedIdentities: [] })).rejects.toThrow(/expectedIdentities: expected a non-empty array/)
    await expect(
      h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID], headers: { ':path': '/' } }),
    ).rejects.toThrow(/pseudo-headers/)
    expect(() => createHboneClient({ tls: mesh.clientTls(CLIENT_ID), windows: { maxFrameSize: 10 } })).toThrow(/windows.maxFrameSize: expected an integer 16384-16777215, got 10/)
  })

  it('tunnels over IPv6: [ipv6]:port authority, HBONE peer on ::1', async () => {
    const echo6 = await startEchoServer('::1')
    closers.push(() => echo6.close())
    const h = await harness({}, '::1')
    expect(h.via).toMatch(/^\[::1\]:\d+$/)
    const record = h.nextRecord()
    const tunnel = await h.client.connect(`[::1]:${echo6.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })
    tunnel.end('over v6')
    expect((await readAll(tunnel)).toString()).toBe('over v6')
    expect(await record).toMatchObject({ destination: { address: '::1', port: echo6.port, family: 6 }, peerAddress: { address: '::1', family: 6 } })
  })

  it('connects to <destination ip>:15008 by default, from the given source address', async () => {
    // A loopback address of its own, so port 15008 is free whatever else runs.
    const ip = `127.${(process.pid >> 8) & 0xff}.${process.pid & 0xff}.${Math.floor(Math.random() * 200) + 20}`
    const echoHere = await startEchoServer(ip)
    closers.push(() => echoHere.close())
    const requests: HboneRequest[] = []
    const server = createHboneServer({
      tls: await mesh.serverTls(SERVER_ID),
      decide: (request) => {
        requests.push(request)
        return { action: 'serve' }
      },
    })
    closers.push(() => server.close())
    expect(await server.listen(15008, ip)).toEqual({ address: ip, port: 15008, family: 4 })
    const client = createHboneClient({ tls: mesh.clientTls(CLIENT_ID) })
    closers.push(() => client.close())
    const tunnel = await client.connect(`${ip}:${echoHere.port}`, { expectedIdentities: [SERVER_ID], sourceAddress: '127.0.0.9' })
    tunnel.end('default port')
    expect((await readAll(tunnel)).toString()).toBe('default port')
    expect(requests[0]!.peerAddress.address).toBe('127.0.0.9')
    expect(client.stats()[0]!.key).toBe(`|${SERVER_ID}|${ip}:15008|127.0.0.9`)
  })

  it('serves connections accepted by a listener it does not own (server.handle)', async () => {
    const server = createHboneServer({ tls: await mesh.serverTls(SERVER_ID), decide: () => ({ action: 'serve' }) })
    const listener = createServer((socket) => server.handle(socket))
    listener.listen(0, '127.0.0.1')
    await once(listener, 'listening')
    closers.push(() => new Promise<void>((resolve) => listener.close(() => resolve())), () => server.close())
    const client = createHboneClient({ tls: mesh.clientTls(CLIENT_ID) })
    closers.push(() => client.close())
    const tunnel = await client.connect(`127.0.0.1:${echo.port}`, {
      via: `127.0.0.1:${(listener.address() as AddressInfo).port}`,
      expectedIdentities: [SERVER_ID],
    })
    tunnel.end('handled')
    expect((await readAll(tunnel)).toString()).toBe('handled')
  })

  it('closing the client while a session is being opened leaves nothing open', async () => {
    const h = await harness()
    const asked = deferred<void>()
    const release = deferred<void>()
    const tls = mesh.clientTls(CLIENT_ID)
    const client = createHboneClient({
      tls: async (identity, request) => {
        asked.resolve()
        await release.promise
        return tls(identity, request)
      },
    })
    const pending = client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] }).catch((e: unknown) => e)
    await asked.promise
    const closing = client.close()
    release.resolve()
    await closing
    expect(isAmbientError(await pending)).toBe(true)
    expect(client.stats()).toEqual([])
    await vi.waitFor(() => expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 }))
  })

  it('leaves no session, stream, socket or handle behind after close', async () => {
    const before = process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout').length
    const h = await harness()
    const tunnels = await Promise.all(
      Array.from({ length: 3 }, () => h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })),
    )
    tunnels[0]!.end('done')
    await readAll(tunnels[0]!)
    const reset = tunnels.slice(1).map((tunnel) => closed(tunnel))
    await h.client.close()
    await Promise.all(reset)
    await vi.waitFor(() => expect(h.server.stats()).toEqual({ connections: 0, sessions: 0, tunnels: 0 }))
    await h.server.close()
    await h.server.close()
    expect(h.client.stats()).toEqual([])
    await vi.waitFor(() => expect(echo.sockets.size).toBe(0))
    await vi.waitFor(() => {
      const after = process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout').length
      expect(after).toBeLessThanOrEqual(before)
    })
    await expect(h.client.connect(`127.0.0.1:${echo.port}`, { via: h.via, expectedIdentities: [SERVER_ID] })).rejects.toThrow(/closed/)
  })
})

async function svidPem(m: TestMesh, id: string): Promise<{ key: string; cert: string }> {
  const svid = await m.manager.get(id)
  return { key: svid.privateKeyPem, cert: svid.certificateChainPem }
}

async function startServer(onSocket: (socket: Socket) => void | Promise<void>): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>()
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    void onSocket(socket)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  let closed: Promise<void> | undefined
  const close = (): Promise<void> => {
    closed ??= new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy()
      server.close(() => resolve())
    })
    return closed
  }
  closers.push(close)
  return { port: (server.address() as AddressInfo).port, close }
}

function deferred<T>(): { promise: Promise<T>; resolve(value: T): void } {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((r) => (resolve = r))
  return { promise, resolve }
}
