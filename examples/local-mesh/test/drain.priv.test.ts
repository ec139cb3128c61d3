// A node agent of a live local mesh stopped with SIGTERM: a request under way
// through it finishes (drain), while new connections are refused (its
// listeners are gone, capture stays: fail closed).
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import type { Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, expect, it } from 'vitest'
import { openNetns } from '@ambientkit/redirect'
import { describePrivileged } from '../../../test/support/privileged'
import { state } from '../src/paths'

const demo = fileURLToPath(new URL('../bin/demo.mjs', import.meta.url))

/** Everything `socket` receives until it ends; rejects on a reset. */
function readAll(socket: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', reject)
    socket.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
  })
}

describePrivileged('node agent drain on SIGTERM in a live mesh (issue 15)', ['ip', 'iptables', 'nft', 'tcpdump'], () => {
  const stateDir = join(mkdtempSync(join(tmpdir(), 'akm-drain-')), 'state')
  const prefix = `akd${process.pid % 100_000}`
  const env = { ...process.env, AMBIENTKIT_LOCAL_STATE_DIR: stateDir, AMBIENTKIT_LOCAL_PREFIX: prefix }
  const run = (args: string[]): Promise<{ stdout: string; stderr: string }> => promisify(execFile)(process.execPath, [demo, ...args], { env, timeout: 180_000 })
  let up = false
  afterAll(async () => {
    if (up) await run(['--down'])
  }, 120_000)

  it('a request under way through the stopped agent finishes; new connections are refused', async () => {
    up = true
    await run(['--up'])
    const frontend = openNetns(`/run/netns/${prefix}-p-shop-frontend`)
    try {
      // frontend (node-1) → api (node-2): through node-1's outbound listener, then HBONE.
      const inFlight = await frontend.connect({ host: '10.44.2.2', port: 8080, signal: AbortSignal.timeout(5000) })
      const answer = readAll(inFlight)
      answer.catch(() => undefined)
      inFlight.write('GET /drain HTTP/1.1\r\nHost: 10.44.2.2:8080\r\nX-Marker: in-flight\r\n')
      const { pid } = JSON.parse(readFileSync(join(state.pids(stateDir), 'agent-node-1.pid'), 'utf8')) as { pid: number }
      process.kill(pid, 'SIGTERM')
      // Another process's drain: polling is the only view. It has begun once node-1's outbound listener refuses connections.
      for (let tries = 0; ; tries++) {
        expect(tries).toBeLessThan(100)
        const refused = await frontend.connect({ host: '10.44.2.2', port: 8080, signal: AbortSignal.timeout(1000) }).then(
          (socket) => (socket.destroy(), false),
          () => true,
        )
        if (refused) break
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      inFlight.write('\r\n')
      const text = await answer
      expect(text).toMatch(/^HTTP\/1\.1 200/)
      expect(JSON.parse(text.split('\r\n\r\n')[1]!)).toMatchObject({ app: 'shop/api', marker: 'in-flight' })
    } finally {
      await frontend.close()
    }
  }, 240_000)
})
