// Types of scripts/prebuilds.mjs, for the tests that check what it built.

export interface Target {
  readonly name: string
  readonly arch: 'x64' | 'arm64'
  readonly libc: 'glibc' | 'musl'
  readonly deb: 'amd64' | 'arm64'
  readonly gnu: string
  readonly musl?: string
  readonly loader?: string
  readonly cc: string
  readonly machine: string
}
export interface Package {
  readonly name: 'redirect' | 'proxy'
  readonly dir: string
}
export interface Inspection {
  readonly machine: string | undefined
  readonly needed: string[]
  readonly bindNow: boolean
  readonly newestGlibc: string | null
}
export const CACHE: string
export const DEBIAN: { readonly suite: string; readonly uri: string; readonly keyring: string }
export const GLIBC_CEILING: string
export const TARGETS: readonly Target[]
export const PACKAGES: readonly Package[]
export function prebuildPath(pkg: Package, target: Target): string
export function sourceDigest(pkg: Package): string
export function debianRoots(cache: string, archs: readonly string[]): { roots: Record<string, string>; versions: Record<string, string> }
export function inspect(file: string): Inspection
export function check(file: string, target: Target): Inspection
export function compareVersions(a: string, b: string): number
