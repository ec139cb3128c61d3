import type { HboneDataPath } from '@ambientkit/proxy'
import { nativeHbone, type NativeAddon } from '../../src/hbone/native'

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
