import { writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { HboneDataPath } from '@ambientkit/proxy'
import { nativeHbone, type NativeAddon } from '../../src/hbone/native'
import { createTestMesh } from '../interop/support'

/** The native HBONE addon, or `undefined` (with a printed reason) when it is not built. Under CI a missing addon is an error, never a skip. */
export function nativeAddonOrSkip(suite: string): NativeAddon | undefined {
  const addon = nativeHbone()
  if (addon !== undefined) return addon
  const reason = 'the native HBONE addon is not built (npm run native -w @ambientkit/proxy)'
  if (process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false') throw new Error(`${suite} cannot run under CI: ${reason}`)
  console.warn(`[skip] ${suite}: ${reason}`)
  return undefined
}

/** The data paths a suite runs on: both, or only Node's (with a printed reason) when the addon is not built. */
export function dataPaths(suite: string): HboneDataPath[] {
  return nativeAddonOrSkip(`${suite} (native data path)`) === undefined ? ['node'] : ['node', 'native']
}

/** The smoke exchange every Node binary can run (support/hbone-smoke.mjs) and the PEM material it reads. */
export const HBONE_SMOKE = fileURLToPath(new URL('./hbone-smoke.mjs', import.meta.url))

/** Writes what hbone-smoke.mjs reads: a server and a client SVID from a fresh CA, and its roots. */
export async function writeSmokeMaterial(file: string): Promise<string> {
  const mesh = await createTestMesh()
  try {
    const [server, client] = await Promise.all(['api', 'frontend'].map((sa) => mesh.manager.get(`spiffe://cluster.local/ns/shop/sa/${sa}`)))
    const pem = (svid: typeof server) => ({ chain: svid!.certificateChainPem, key: svid!.privateKeyPem })
    writeFileSync(file, JSON.stringify({ server: pem(server), client: pem(client), roots: mesh.rootsPem }))
    return file
  } finally {
    await mesh.close()
  }
}
