// The program in ztunnel's place, started as the DaemonSet starts it (a
// process configured by ztunnel's environment), against the fake istiod
// (delta xDS over TLS, grpc-js) and the fake istio-cni (Python's
// SEQPACKET peer) of packages/istio's tests.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADDRESS, AUTHORIZATION, startFakeIstiod } from '../../../packages/istio/test/support/fake-istiod'
import { generatePythonModules, pythonPeerSkipReason, startPython, type PythonPeer } from '../../../packages/istio/test/support/python'
import { makeTestPki } from '../../../packages/istio/test/support/tls'

const root = fileURLToPath(new URL('../../../', import.meta.url))
const skip = pythonPeerSkipReason()
if (skip !== undefined) console.warn(`skipping the istio node program test: ${skip}`)

describe.skipIf(skip !== undefined)('the istio node program', () => {
  let istiod: Awaited<ReturnType<typeof startFakeIstiod>>
  let cni: PythonPeer
  let modules: string
  let dir: string
  let child: ChildProcess | undefined

  beforeAll(async () => {
    const pki = makeTestPki()
    istiod = await startFakeIstiod({ key: pki.serverKeyPem, cert: pki.serverCertPem })
    dir = mkdtempSync(join(tmpdir(), 'ak-istio-node-'))
    writeFileSync(join(dir, 'root-cert.pem'), pki.caPem)
    writeFileSync(join(dir, 'istio-token'), 'a-projected-token\n')
    modules = generatePythonModules()
    cni = startPython('zds_server.py', [modules, join(dir, 'ztunnel.sock')])
    await cni.next() // listening
  })
  afterAll(async () => {
    if (child?.exitCode === null) {
      child.kill('SIGKILL')
      await once(child, 'exit')
    }
    await cni?.stop()
    await istiod?.close()
    rmSync(modules, { recursive: true, force: true })
    rmSync(dir, { recursive: true, force: true })
  })

  const send = async (command: Record<string, unknown>): Promise<Record<string, unknown>> => {
    cni.child.stdin!.write(`${JSON.stringify(command)}\n`)
    return cni.next()
  }

  it('is ready once istiod sent both types and istio-cni its snapshot, serves ztunnel’s ports, and drains on SIGTERM', { timeout: 60_000 }, async () => {
    child = spawn(process.execPath, ['--import', 'tsx', join(root, 'examples/istio/src/main.ts')], {
      cwd: root,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: {
        PATH: process.env.PATH,
        NODE_NAME: 'node-1',
        XDS_ADDRESS: `https://127.0.0.1:${istiod.port}`,
        XDS_ROOT_CA: join(dir, 'root-cert.pem'),
        CA_ADDRESS: `https://127.0.0.1:${istiod.port}`,
        CA_ROOT_CA: join(dir, 'root-cert.pem'),
        AUTH_TOKEN: join(dir, 'istio-token'),
        INPOD_UDS: join(dir, 'ztunnel.sock'),
        CLUSTER_ID: 'Kubernetes',
        AMBIENTKIT_STATUS_ADDRESS: '127.0.0.1:0',
        AMBIENTKIT_STATS_ADDRESS: '127.0.0.1:0',
        AMBIENTKIT_ADMIN_ADDRESS: '127.0.0.1:0',
      },
    })
    const lines: Array<Record<string, unknown>> = []
    const lineWaiters: Array<() => void> = []
    /** Resolves once the program logged `msg`. */
    const logged = async (msg: string): Promise<void> => {
      while (!lines.some((l) => l.msg === msg)) await new Promise<void>((resolve) => lineWaiters.push(resolve))
    }
    let stderr = ''
    const started = new Promise<{ status: { port: number }; stats: { port: number }; admin: { port: number } }>((resolve, reject) => {
      createInterface({ input: child!.stderr! }).on('line', (line) => {
        stderr += `${line}\n`
        try {
          const entry = JSON.parse(line) as Record<string, unknown>
          lines.push(entry)
          for (const wake of lineWaiters.splice(0)) wake()
          if (entry.msg === 'listening') resolve(entry.addresses as never)
        } catch {
          // not a log line (a Node warning)
        }
      })
      child!.once('exit', (code) => reject(new Error(`the program exited (${code}) before it started:\n${stderr}`)))
    })

    // istiod's stream opens as ztunnel's does, with the token and the cluster id.
    const stream = await istiod.streams()
    expect((await stream.next()).typeUrl).toBe(ADDRESS)
    expect((await stream.next()).typeUrl).toBe(AUTHORIZATION)
    expect(stream.metadata.get('authorization')).toEqual(['Bearer a-projected-token'])
    const addresses = await started
    const get = async (port: number, path: string): Promise<{ status: number; body: string }> => {
      const response = await fetch(`http://127.0.0.1:${port}${path}`)
      return { status: response.status, body: await response.text() }
    }
    expect(await get(addresses.status.port, '/healthz/ready')).toEqual({ status: 503, body: 'not ready\n' })

    stream.push(ADDRESS, [])
    expect((await stream.next()).errorDetail).toBeNull()
    stream.push(AUTHORIZATION, [])
    expect((await stream.next()).errorDetail).toBeNull()
    expect((await get(addresses.admin.port, '/healthz/ready')).body).toMatch(/zds \(/)
    // istio-cni: hello, then an empty snapshot.
    expect(await send({ op: 'accept' })).toMatchObject({ hello: '0801' })
    expect(await send({ op: 'snapshot' })).toEqual(expect.objectContaining({ ack: '' }))
    expect(await get(addresses.status.port, '/healthz/ready')).toEqual({ status: 200, body: 'ready\n' })
    await logged('node agent started')

    const dump = JSON.parse((await get(addresses.admin.port, '/config_dump')).body) as { components: Record<string, { ready: boolean }> }
    expect(dump.components).toMatchObject({ wds: { ready: true }, zds: { ready: true } })
    expect((await get(addresses.stats.port, '/metrics')).body).toContain('# TYPE istio_tcp_connections_opened_total counter')
    expect((await get(addresses.stats.port, '/config_dump')).status).toBe(404)

    child.kill('SIGTERM')
    // 'close': exited, and its log read to the end.
    const [code] = (await once(child, 'close')) as [number | null]
    expect(code).toBe(0)
    expect(lines.map((l) => l.msg)).toContain('draining')
  })
})
