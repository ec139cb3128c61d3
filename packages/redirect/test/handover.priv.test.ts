import { closeSync, readFileSync, writeFileSync } from 'node:fs'
import { Socket } from 'node:net'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createTestNetwork, type TestNetwork } from '../../../test/support/netns'
import { describePrivileged } from '../../../test/support/privileged'
import { enableListenerHandover, openNetns, type Netns } from '../src/index'

const PORT = 15001
const CLIENTS = 32

describePrivileged('listener hand-over: net.ipv4.tcp_migrate_req', [], () => {
  let network: TestNetwork
  let netns: Netns

  beforeAll(async () => {
    network = createTestNetwork('ak-handover')
    netns = openNetns((await network.addNamespace('handover')).path)
  })
  afterAll(async () => {
    await netns?.close()
    await network?.cleanup()
  })

  /**
   * An old listener that accepts nothing (its queue holds what the kernel
   * gave it) and a new one of the same SO_REUSEPORT group that echoes; the
   * old one closes with CLIENTS connections spread over both queues. What
   * each client got back: its byte, or the error that ended it.
   */
  async function handOver(): Promise<string[]> {
    const old = netns.listenFd({ host: '127.0.0.1', port: PORT, reusePort: true })
    let acceptor: ReturnType<Netns['accept']> | undefined
    try {
      acceptor = netns.accept(netns.listenFd({ host: '127.0.0.1', port: PORT, reusePort: true }), ({ fd }) => {
        const socket = new Socket({ fd, readable: true, writable: true })
        socket.on('error', () => socket.destroy())
        socket.pipe(socket)
      })
      const clients = await Promise.all(Array.from({ length: CLIENTS }, () => netns.connect({ host: '127.0.0.1', port: PORT })))
      closeSync(old)
      return await Promise.all(
        clients.map(
          (client, i) =>
            new Promise<string>((resolve) => {
              const byte = String.fromCharCode(65 + (i % 26))
              client.once('data', (data: Buffer) => resolve(data.toString() === byte ? 'echoed' : `wrong ${data.toString()}`))
              client.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
              client.once('end', () => resolve('ended'))
              client.write(byte)
            }).finally(() => client.destroy()),
        ),
      )
    } finally {
      acceptor?.close()
    }
  }

  it('with it on (as capture sets it), connections queued on a closing listener move to the other one of its group; off, they are reset', async () => {
    expect(enableListenerHandover(netns)).toBe(true)
    expect(netns.runSync(() => readFileSync('/proc/sys/net/ipv4/tcp_migrate_req', 'utf8').trim())).toBe('1')
    expect(await handOver()).toEqual(Array(CLIENTS).fill('echoed'))

    // /proc/sys/net is the namespace of the calling thread: runSync's.
    netns.runSync(() => writeFileSync('/proc/sys/net/ipv4/tcp_migrate_req', '0'))
    const outcomes = await handOver()
    // Spread by the kernel's hash over two queues: about half were on the old one.
    expect(outcomes.filter((o) => o === 'ECONNRESET').length).toBeGreaterThan(0)
    expect(outcomes.every((o) => o === 'echoed' || o === 'ECONNRESET')).toBe(true)
  })
})

