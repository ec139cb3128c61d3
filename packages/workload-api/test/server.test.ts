import { execFileSync, spawn } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  SpiffeId, TrustBundle, createCertificateAuthority, createIdentityManager, createJwtSvidIssuer, createLocalCaSource, verifyJwtSvid,
  type IdentityManager,
} from '@ambientkit/identity'
import { createWorkloadApiServer, createWorkloadApiSource, type CallerProcess, type WorkloadApiServer } from '@ambientkit/workload-api'
import { workloadApiService, type X509SvidResponse } from '../src/proto'

const API = SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/api')
const dir = mkdtempSync(join(tmpdir(), 'ak-wl-'))
const python = '/usr/bin/python3'
const script = fileURLToPath(new URL('./python/fetch_x509_svid.py', import.meta.url))

let manager: IdentityManager
let server: WorkloadApiServer
/** Who gets what: the test decides per pid. */
let entitled = new Map<number, SpiffeId[]>()
const attested: CallerProcess[] = []

beforeAll(async () => {
  const ca = await createCertificateAuthority({ trustDomain: 'cluster.local' })
  const other = await createCertificateAuthority({ trustDomain: 'partner.org' })
  const jwt = await createJwtSvidIssuer({ trustDomain: 'cluster.local' })
  const source = createLocalCaSource(ca, { jwtIssuers: [jwt] })
  source.bundles.set(other.bundle)
  manager = createIdentityManager({ source, ttlSeconds: 600 })
  server = await createWorkloadApiServer({
    socketPath: join(dir, 'api.sock'),
    manager,
    attest: (caller) => {
      attested.push(caller)
      return entitled.get(caller.pid) ?? []
    },
  })
  execFileSync('protoc', [`-I${fileURLToPath(new URL('../proto/', import.meta.url))}`, '-I/usr/include', `--python_out=${dir}`, 'workloadapi.proto'])
})
afterAll(async () => {
  await server.close()
  await manager.close()
  rmSync(dir, { recursive: true, force: true })
})
afterEach(() => {
  entitled = new Map()
})

function client(): grpc.Client & Record<string, (...args: unknown[]) => unknown> {
  return new (workloadApiService())(`unix://${join(dir, 'api.sock')}`, grpc.credentials.createInsecure()) as never
}
const header = (): grpc.Metadata => {
  const md = new grpc.Metadata()
  md.set('workload.spiffe.io', 'true')
  return md
}

/** Runs the Python client; entitles its pid before it connects. */
function pythonFetch(messages: number, identities: SpiffeId[], flags: string[] = []): { lines: AsyncIterableIterator<string>; exited: Promise<void> } {
  const child = spawn(python, [script, dir, join(dir, 'api.sock'), String(messages), ...flags], { stdio: ['ignore', 'pipe', 'inherit'] })
  entitled.set(child.pid!, identities)
  return { lines: createInterface({ input: child.stdout! })[Symbol.asyncIterator](), exited: new Promise((resolve) => child.once('exit', () => resolve())) }
}

describe('Workload API server', () => {
  it('streams a Python grpcio client its own SVID at once, and again on rotation', async () => {
    const { lines, exited } = pythonFetch(2, [API])
    const first = JSON.parse((await lines.next()).value as string) as { svids: Array<{ spiffe_id: string; uris: string[]; serial: string; key_matches: boolean; bundle_bytes: number }> }
    expect(first.svids).toHaveLength(1)
    expect(first.svids[0]).toMatchObject({ spiffe_id: API.toString(), uris: [API.toString()], key_matches: true })
    expect(first.svids[0]!.bundle_bytes).toBeGreaterThan(300)
    const rotated = await manager.rotate(API)
    const second = JSON.parse((await lines.next()).value as string) as typeof first
    expect(second.svids[0]!.serial).toBe(new X509Certificate(rotated.certificateChainPem).serialNumber)
    await exited
    // Attested from the socket: the pid the kernel gave, its network namespace and cgroup read from /proc.
    const caller = attested.findLast((c) => entitled.has(c.pid) || c.pid > 0)!
    expect(caller.netns?.ino).toBeGreaterThan(0)
    expect(caller.cgroup).toMatch(/^0::/m)
  })

  it('answers INVALID_ARGUMENT without the security header, and PERMISSION_DENIED to a process with no identity', async () => {
    const noHeader = pythonFetch(1, [API], ['--no-header'])
    expect(JSON.parse((await noHeader.lines.next()).value as string)).toEqual({ code: 'INVALID_ARGUMENT', details: 'security header missing from request' })
    await noHeader.exited
    const stranger = pythonFetch(1, [])
    expect(JSON.parse((await stranger.lines.next()).value as string)).toEqual({ code: 'PERMISSION_DENIED', details: 'no identity issued' })
    await stranger.exited
  })

  it('sends the full state again when the bundles change (federated ones by trust domain ID), and ends the stream when the caller loses its identity', async () => {
    entitled.set(process.pid, [API])
    const c = client()
    const stream = c.FetchX509SVID!({}, header()) as grpc.ClientReadableStream<X509SvidResponse>
    const messages: X509SvidResponse[] = []
    const ended = new Promise<grpc.ServiceError>((resolve) => stream.on('error', resolve))
    let notify: (() => void) | undefined
    stream.on('data', (m: X509SvidResponse) => {
      messages.push(m)
      notify?.()
    })
    const next = (): Promise<void> => new Promise((resolve) => (notify = resolve))
    await next()
    expect(Object.keys(messages[0]!.federated_bundles)).toEqual(['spiffe://partner.org'])
    const arrived = next()
    manager.bundles.delete('partner.org')
    await arrived
    expect(messages[1]!.federated_bundles).toEqual({})
    entitled.delete(process.pid)
    server.refresh()
    const err = await ended
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED)
    c.close()
  })

  it('mints JWT-SVIDs for the caller only, validates them, and streams JWT bundles', async () => {
    entitled.set(process.pid, [API])
    const c = client()
    const call = <T>(method: string, request: object): Promise<T> => new Promise((resolve, reject) => (c[method] as (r: object, m: grpc.Metadata, cb: (e: Error | null, r: T) => void) => void)(request, header(), (e, r) => (e ? reject(e) : resolve(r))))
    const minted = await call<{ svids: Array<{ spiffe_id: string; svid: string }> }>('FetchJWTSVID', { audience: ['payments'] })
    expect(minted.svids.map((s) => s.spiffe_id)).toEqual([API.toString()])
    expect(verifyJwtSvid(minted.svids[0]!.svid, manager.bundles, { audience: 'payments' }).id.toString()).toBe(API.toString())
    await expect(call('FetchJWTSVID', { audience: [] })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT })
    await expect(call('FetchJWTSVID', { audience: ['x'], spiffe_id: 'spiffe://cluster.local/ns/shop/sa/db' })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED })
    const validated = await call<{ spiffe_id: string; claims: { fields: Record<string, { stringValue?: string }> } }>('ValidateJWTSVID', { audience: 'payments', svid: minted.svids[0]!.svid })
    expect(validated.spiffe_id).toBe(API.toString())
    expect(validated.claims.fields.sub?.stringValue).toBe(API.toString())
    await expect(call('ValidateJWTSVID', { audience: 'other', svid: minted.svids[0]!.svid })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/wrong-audience/) })
    const bundles = c.FetchJWTBundles!({}, header()) as grpc.ClientReadableStream<{ bundles: Record<string, Buffer> }>
    bundles.on('error', () => undefined)
    const first = await new Promise<{ bundles: Record<string, Buffer> }>((resolve) => bundles.once('data', resolve))
    bundles.cancel()
    const jwks = TrustBundle.parse('cluster.local', first.bundles['spiffe://cluster.local']!.toString())
    expect(jwks.jwtAuthorities).toHaveLength(1)
    c.close()
  })

  it('feeds an identity manager through the client source, renewals included', async () => {
    entitled.set(process.pid, [API])
    const source = createWorkloadApiSource({ address: `unix://${join(dir, 'api.sock')}` })
    const fed = createIdentityManager({ source })
    const svid = await fed.get(API)
    expect(svid.id.toString()).toBe(API.toString())
    expect(source.bundles.get('cluster.local')!.x509AuthoritiesPem()).toBe(manager.bundles.get('cluster.local')!.x509AuthoritiesPem())
    const rotated = new Promise<string>((resolve) => fed.subscribe((e) => e.type === 'rotated' && resolve(e.svid.certificateChainPem)))
    const renewed = await manager.rotate(API)
    expect(await rotated).toBe(renewed.certificateChainPem)
    await fed.close()
  })

  it('a new server on the same path (an upgraded agent) takes it over, and the old one closing leaves the new one serving', async () => {
    const socketPath = join(dir, 'handover.sock')
    const served: string[] = []
    const serve = (name: string) => () => {
      served.push(name)
      return [API]
    }
    const old = await createWorkloadApiServer({ socketPath, manager, attest: serve('old') })
    const next = await createWorkloadApiServer({ socketPath, manager, attest: serve('new') })
    try {
      await old.close()
      const source = createWorkloadApiSource({ address: `unix://${socketPath}` })
      const fed = createIdentityManager({ source })
      expect((await fed.get(API)).id.toString()).toBe(API.toString())
      await fed.close()
      expect(served).toEqual(['new'])
      expect(readdirSync(dir).filter((name) => name.startsWith('handover.sock'))).toEqual(['handover.sock'])
    } finally {
      await next.close()
    }
    expect(existsSync(socketPath)).toBe(false)
  })
})
