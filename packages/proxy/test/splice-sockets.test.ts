import { once } from 'node:events'
import { connect as netConnect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { spliceSockets, type SocketSpliceResult } from '@ambientkit/proxy'

const closers: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close()
})

async function listen(server: Server): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  closers.push(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return (server.address() as AddressInfo).port
}

/**
 * client → [accepted ⇄ upstream, spliced] → sink. The accepted socket waits
 * paused for its upstream, as the workload proxy's listeners do; the sink
 * is paused too, so the test decides when it reads.
 */
async function splicedPair(): Promise<{ client: Socket; accepted: Socket; upstream: Socket; sink: Socket; result: Promise<SocketSpliceResult> }> {
  const sinks: Socket[] = []
  const sinkPort = await listen(createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => sinks.push(socket)))
  let spliced: ((value: { accepted: Socket; upstream: Socket; result: Promise<SocketSpliceResult> }) => void) | undefined
  const splicing = new Promise<{ accepted: Socket; upstream: Socket; result: Promise<SocketSpliceResult> }>((resolve) => (spliced = resolve))
  const proxyPort = await listen(
    createServer({ allowHalfOpen: true, pauseOnConnect: true }, (accepted) => {
      const upstream = netConnect({ host: '127.0.0.1', port: sinkPort })
      upstream.once('connect', () => spliced?.({ accepted, upstream, result: spliceSockets(accepted, upstream) }))
    }),
  )
  const client = netConnect({ host: '127.0.0.1', port: proxyPort, allowHalfOpen: true })
  closers.push(async () => {
    client.destroy()
    for (const sink of sinks) sink.destroy()
  })
  const { accepted, upstream, result } = await splicing
  await vi.waitFor(() => expect(sinks).toHaveLength(1))
  return { client, accepted, upstream, sink: sinks[0]!, result }
}

describe('spliceSockets', () => {
  it('pauses the reading side while the other side cannot write, and loses nothing', async () => {
    const { client, accepted, upstream, sink, result } = await splicedPair()
    const size = 16 * 1024 * 1024
    client.end(Buffer.alloc(size, 0x61))
    // The sink reads nothing: the splice must stop reading instead of buffering everything.
    await vi.waitFor(() => expect(accepted.isPaused()).toBe(true))
    expect(upstream.writableLength).toBeLessThan(1024 * 1024)
    let received = 0
    sink.on('data', (chunk: Buffer) => (received += chunk.length))
    sink.resume()
    await once(sink, 'end')
    expect(received).toBe(size)
    sink.end()
    client.resume()
    await once(client, 'close')
    expect(await result).toMatchObject({ outcome: 'closed', aToB: size, bToA: 0 })
  })

  it('forwards a FIN each way on its own, and the other direction keeps flowing', async () => {
    const { client, sink, result } = await splicedPair()
    sink.resume()
    client.end('question')
    const asked: Buffer[] = []
    sink.on('data', (chunk: Buffer) => asked.push(chunk))
    await once(sink, 'end')
    expect(Buffer.concat(asked).toString()).toBe('question')
    sink.end('answer')
    const answer: Buffer[] = []
    client.on('data', (chunk: Buffer) => answer.push(chunk))
    await once(client, 'end')
    expect(Buffer.concat(answer).toString()).toBe('answer')
    expect(await result).toMatchObject({ outcome: 'closed', aToB: 8, bToA: 6 })
  })

  it('resets the other side when one side is reset', async () => {
    const { client, sink, result } = await splicedPair()
    sink.resume()
    client.write('x')
    await once(sink, 'data')
    const reset = new Promise<string | undefined>((resolve) => {
      let code: string | undefined
      sink.on('error', (err: NodeJS.ErrnoException) => (code = err.code))
      sink.once('close', () => resolve(code))
    })
    client.resetAndDestroy()
    expect(await reset).toBe('ECONNRESET')
    expect((await result).outcome).toBe('reset')
  })
})
