import { execFile, execFileSync } from 'node:child_process'
import { promisify } from 'node:util'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { SpiffeId, createCertificateAuthority, createIdentityManager, createLocalCaSource, type IdentityManager } from '@ambientkit/identity'
import { createNetnsAttestor, createWorkloadApiServer, type WorkloadApiServer } from '@ambientkit/workload-api'
import { describePrivileged } from '../../../test/support/privileged'
import { createTestNetwork, type TestPod } from '../../../test/support/netns'

const API = SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/api')
const DB = SpiffeId.parse('spiffe://cluster.local/ns/shop/sa/db')
const script = fileURLToPath(new URL('./python/fetch_x509_svid.py', import.meta.url))

describePrivileged('Workload API attestation by network namespace', ['ip', 'nsenter', 'protoc'], () => {
  const network = createTestNetwork('ak-wla')
  const dir = mkdtempSync(join(tmpdir(), 'ak-wla-'))
  let api: TestPod
  let db: TestPod
  let outsider: TestPod
  let manager: IdentityManager
  let server: WorkloadApiServer
  let enrolled: Array<{ netnsPath: string; identity: SpiffeId }>
  beforeAll(async () => {
    const node = await network.addNode()
    ;[api, db, outsider] = [await network.addPod(node), await network.addPod(node), await network.addPod(node)]
    manager = createIdentityManager({ source: createLocalCaSource(await createCertificateAuthority({ trustDomain: 'cluster.local' })) })
    enrolled = [{ netnsPath: api.path, identity: API }, { netnsPath: db.path, identity: DB }]
    server = await createWorkloadApiServer({ socketPath: join(dir, 'socket'), manager, attest: createNetnsAttestor(() => enrolled) })
    execFileSync('protoc', [`-I${fileURLToPath(new URL('../proto/', import.meta.url))}`, '-I/usr/include', `--python_out=${dir}`, 'workloadapi.proto'])
  })
  afterAll(async () => {
    await server?.close()
    await manager?.close()
    await network.cleanup()
    rmSync(dir, { recursive: true, force: true })
  })

  // The pods share this machine's filesystem, as the local mesh's do: one socket, each caller told apart by its namespace.
  const fetchIn = async (pod: TestPod): Promise<unknown> => JSON.parse((await pod.exec('/usr/bin/python3', [script, dir, join(dir, 'socket'), '1'])).stdout)

  it('gives a process in a pod\'s network namespace exactly that pod\'s SVID', async () => {
    expect(await fetchIn(api)).toMatchObject({ svids: [{ spiffe_id: API.toString(), uris: [API.toString()], key_matches: true }] })
    expect(await fetchIn(db)).toMatchObject({ svids: [{ spiffe_id: DB.toString(), uris: [DB.toString()] }] })
  })

  it('gives nothing to a pod that is not enrolled, to the host, and to a pod once it leaves', async () => {
    expect(await fetchIn(outsider)).toEqual({ code: 'PERMISSION_DENIED', details: 'no identity issued' })
    // Asynchronous: the server answers from this process's event loop.
    const host = await promisify(execFile)('/usr/bin/python3', [script, dir, join(dir, 'socket'), '1'], { encoding: 'utf8' })
    expect(JSON.parse(host.stdout)).toEqual({ code: 'PERMISSION_DENIED', details: 'no identity issued' })
    enrolled = enrolled.filter((p) => p.identity !== DB)
    expect(await fetchIn(db)).toEqual({ code: 'PERMISSION_DENIED', details: 'no identity issued' })
  })
})
