import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer, type AddressInfo, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Socket } from 'node:net'
import type { SocketAddress } from '@ambientkit/core'
import {
  createNativeTransport,
  createNodeTransport,
  type HboneRequest,
  type HboneTransport,
  type HboneTunnel,
  type HboneTunnelRecord,
  type TransportClient,
  type TransportServer,
} from '@ambientkit/proxy'
import { closed, createTestMesh, readAll, startEchoServer, writeSvidFiles, type TestMesh } from './interop/support'
import { appConnections, listenDescriptors, sockets } from './support/descriptors'
import { nativeAddonOrSkip } from './support/native'

// Interoperability with an HTTP/2 stack we did not write: Go's standard
// library (net/http), as HBONE client through our server and as HBONE server
// behind our client, with SPIFFE certificates from our CA, on every
// transport that crosses a wire.
const TRANSPORTS: Array<[string, () => HboneTransport]> = [
  ['node', createNodeTransport],
  ...(nativeAddonOrSkip('HBONE interop with Go on the native transport') === undefined ? [] : [['native', createNativeTransport] as [string, () => HboneTransport]]),
]

const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/api'
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/frontend'
const GO_SERVER_ID = 'spiffe://cluster.local/ns/go/sa/server'
const GO_CLIENT_ID = 'spiffe://cluster.local/ns/go/sa/client'
const source = new URL('./interop/go/hbone.go', import.meta.url).pathname

function goSkipReason(): string | undefined {
  try {
    execFileSync('go', ['version'], { stdio: 'ignore' })
    return undefined
  } catch {
    const reason = '`go` is not installed (apt-get install golang-go)'
    if (process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false') {
      throw new Error(`interop tests cannot run under CI: ${reason}`)
    }
    return reason
  }
}

const skipReason = goSkipReason()
if (skipReason !== undefined) console.warn(`[skip] HBONE interop with Go: ${skipReason}`)
const describeGo = skipReason === undefined ? describe : describe.skip

describeGo.each(TRANSPORTS)('HBONE interop with Go net/http: %s transport', (_name, transport) => {
  let dir: string
  let binary: string
  let mesh: TestMesh
  let echo: Awaited<ReturnType<typeof startEchoServer>>
  let echo6: Awaited<ReturnType<typeof startEchoServer>>
  let goFiles: { client: Awaited<ReturnType<typeof writeSvidFiles>>; server: Awaited<ReturnType<typeof writeSvidFiles>> }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ak-hbone-go-'))
    binary = join(dir, 'hbone')
    // Standard library only, no network: module mode off, proxy off. The build cache
    // is a temp dir kept between runs so the standard library is compiled once.
    const cache = join(tmpdir(), 'ambientkit-hbone-gocache')
    mkdirSync(join(dir, 'gopath'))
    execFileSync('go', ['build', '-o', binary, source], {
      env: { ...process.env, GOCACHE: cache, GOPATH: join(dir, 'gopath'), GO111MODULE: 'off', GOPROXY: 'off', GOFLAGS: '' },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    mesh = await createTestMesh()
    goFiles = {
      client: await writeSvidFiles(mesh, GO_CLIENT_ID, dir, 'go-client'),
      server: await writeSvidFiles(mesh, GO_SERVER_ID, dir, 'go-server'),
    }
    echo = await startEchoServer()
    echo6 = await startEchoServer('::1')
  }, 180_000)

  afterAll(async () => {
    await echo?.close()
    await echo6?.close()
    await mesh?.close()
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
  })

  describe('a Go client through our server', () => {
    let server: TransportServer
    let listener: { address: SocketAddress; close(): void }
    let addr: string
    const requests: HboneRequest[] = []
    const records: HboneTunnelRecord[] = []
    let deny = false
    let onRecord: ((record: HboneTunnelRecord) => void) | undefined
    let resetTarget: Server | undefined

    beforeAll(async () => {
      server = await transport().createServer({
        identities: mesh.manager,
        identity: SERVER_ID,
        connect: (destination, { signal }) => sockets.connectFd({ host: destination.address, port: destination.port, signal }),
        decide: (request) => {
          requests.push(request)
          return deny ? { action: 'deny', reason: 'denied', policy: 'go/deny' } : { action: 'serve' }
        },
        onTunnel: (record) => {
          records.push(record)
          onRecord?.(record)
        },
      })
      listener = listenDescriptors((fd, remote) => server.handle(fd, remote))
      addr = `127.0.0.1:${listener.address.port}`
    })
    afterAll(async () => {
      listener.close()
      await server.close()
    })

    const runClient = (authority: string, expected = SERVER_ID): Promise<{ code: number; stdout: string; stderr: string }> =>
      new Promise((resolve) => {
        execFile(
          binary,
          ['client', addr, authority, expected, goFiles.client.cert, goFiles.client.key, goFiles.client.ca],
          { timeout: 30_000 },
          (err, stdout, stderr) => resolve({ code: err === null ? 0 : ((err as { code?: number }).code ?? 1), stdout, stderr }),
        )
      })

    it('tunnels to the destination with half-close, and the server sees the Go client identity', async () => {
      const result = await runClient(`127.0.0.1:${echo.port}`)
      expect(result.stderr).toBe('')
      expect(result.stdout).toBe('status 200\nbody hello from go\n')
      expect(requests.at(-1)).toMatchObject({
        peerIdentity: GO_CLIENT_ID,
        destination: { address: '127.0.0.1', port: echo.port },
        traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      })
      expect(records.at(-1)).toMatchObject({ status: 200, outcome: 'closed', bytesReceived: 13, bytesSent: 13 })
    })

    it('tunnels to an [ipv6]:port authority', async () => {
      const result = await runClient(`[::1]:${echo6.port}`)
      expect(result.stdout).toBe('status 200\nbody hello from go\n')
      expect(requests.at(-1)!.destination).toEqual({ address: '::1', port: echo6.port, family: 6 })
    })

    it('gets our 401 when denied and our 400 for a host-name authority', async () => {
      deny = true
      try {
        expect((await runClient(`127.0.0.1:${echo.port}`)).stdout).toBe('status 401\n')
      } finally {
        deny = false
      }
      expect((await runClient(`localhost:${echo.port}`)).stdout).toBe('status 400\n')
    })

    it("resets the upstream connection when the Go client resets its stream", async () => {
      let received!: () => void
      const upstreamReceived = new Promise<void>((resolve) => (received = resolve))
      const upstreamClosed = new Promise<string | undefined>((resolve) => {
        resetTarget = createServer((socket) => {
          let code: string | undefined
          socket.on('error', (err: NodeJS.ErrnoException) => (code = err.code))
          socket.on('close', () => resolve(code))
          // Reading is how a socket notices the peer's RST; with nothing left unread, it is seen as ECONNRESET.
          socket.on('data', () => received())
        })
      })
      resetTarget!.listen(0, '127.0.0.1')
      await once(resetTarget!, 'listening')
      const record = new Promise<HboneTunnelRecord>((resolve) => (onRecord = resolve))
      const child = spawn(
        binary,
        ['client-reset', addr, `127.0.0.1:${(resetTarget!.address() as AddressInfo).port}`, SERVER_ID, goFiles.client.cert, goFiles.client.key, goFiles.client.ca],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      )
      const exited = once(child, 'exit')
      try {
        const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string]
        expect(line).toBe('status 200')
        await upstreamReceived
        child.stdin!.write('reset now\n')
        expect(await upstreamClosed).toBe('ECONNRESET')
        expect((await record).outcome).toBe('stream-reset')
      } finally {
        child.stdin!.end()
        await exited
        await new Promise<void>((resolve) => resetTarget!.close(() => resolve()))
      }
    })

    it('refuses our server when it expects another identity', async () => {
      const result = await runClient(`127.0.0.1:${echo.port}`, 'spiffe://cluster.local/ns/shop/sa/other')
      expect(result.code).not.toBe(0)
      expect(result.stderr).toMatch(/server is spiffe:\/\/cluster.local\/ns\/shop\/sa\/api, expected/)
    })
  })

  describe('our client through a Go server', () => {
    let child: ChildProcess
    let addr: string
    let via: SocketAddress
    let client: TransportClient
    let apps: ReturnType<typeof appConnections>
    const connects: string[] = []
    /** Opens a tunnel for a fresh application connection through the Go server. */
    const open = async (destination: SocketAddress, expected = GO_SERVER_ID): Promise<{ app: Socket; tunnel: HboneTunnel }> => {
      const { app, accepted } = await apps.app()
      return { app, tunnel: await client.open(accepted, destination, { identity: CLIENT_ID, expectedIdentities: [expected], via }) }
    }

    beforeAll(async () => {
      child = spawn(binary, ['server', '127.0.0.1:0', goFiles.server.cert, goFiles.server.key, goFiles.server.ca], {
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      // Its log (handshakes our client refuses on purpose, among others) is kept for a failure message only.
      let log = ''
      child.stderr!.on('data', (chunk: Buffer) => (log += chunk.toString()))
      const lines = createInterface({ input: child.stdout! })
      addr = await new Promise<string>((resolve, reject) => {
        child.once('exit', (code) => reject(new Error(`Go server exited with ${code}: ${log}`)))
        lines.on('line', (line) => {
          if (line.startsWith('listening ')) resolve(line.slice('listening '.length))
          else if (line.startsWith('connect ')) connects.push(line.slice('connect '.length))
        })
      })
      const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))]
      via = { address: host, port, family: 4 }
      client = transport().createClient({
        identities: mesh.manager,
        connectSession: (address, { signal }) => sockets.connectFd({ host: address.address, port: address.port, signal }),
      })
      apps = appConnections()
    })

    afterAll(async () => {
      apps?.close()
      await client?.close()
      if (child !== undefined && child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve))
        child.kill()
        await exited
      }
    })

    const loopback = (port: number): SocketAddress => ({ address: '127.0.0.1', port, family: 4 })

    it('tunnels with half-close, and the Go server sees our client identity', async () => {
      const { app, tunnel } = await open(loopback(echo.port))
      const ended = new Promise((resolve) => tunnel.onClose(resolve))
      app.end('hello from ambientkit')
      expect((await readAll(app)).toString()).toBe('hello from ambientkit')
      await closed(app)
      expect(await ended).toMatchObject({ outcome: 'closed' })
      expect(connects.at(-1)).toBe(`${CLIENT_ID} 127.0.0.1:${echo.port}`)
    })

    it('sends an [ipv6]:port authority', async () => {
      const { app } = await open({ address: '::1', port: echo6.port, family: 6 })
      app.end('v6')
      expect((await readAll(app)).toString()).toBe('v6')
      expect(connects.at(-1)).toBe(`${CLIENT_ID} [::1]:${echo6.port}`)
    })

    it('multiplexes concurrent tunnels on one pooled session', async () => {
      const opened = await Promise.all(['a', 'b', 'c'].map(() => open(loopback(echo.port))))
      expect(client.stats()).toEqual([expect.objectContaining({ peerIdentity: GO_SERVER_ID, streams: 3 })])
      const echoed = await Promise.all(
        opened.map(({ app }, i) => {
          app.end(`tunnel ${i}`)
          return readAll(app)
        }),
      )
      expect(echoed.map(String)).toEqual(['tunnel 0', 'tunnel 1', 'tunnel 2'])
    })

    it("fails with the Go server's status when the upstream is unreachable", async () => {
      const closedPort = await startEchoServer()
      await closedPort.close()
      const err = await open(loopback(closedPort.port)).catch((e: unknown) => e)
      expect(err).toMatchObject({ code: 'ERR_AMBIENT_HBONE_STATUS', details: { status: 503 } })
    })

    it('refuses the Go server when it is not the expected identity', async () => {
      const err = await open(loopback(echo.port), SERVER_ID).catch((e: unknown) => e)
      expect(err).toMatchObject({ code: 'ERR_AMBIENT_HBONE_IDENTITY_MISMATCH' })
    })
  })
})
