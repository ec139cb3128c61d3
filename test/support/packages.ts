import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

interface Manifest {
  readonly name: string
  readonly private?: boolean
  readonly dependencies?: Record<string, string>
}

/**
 * The directory names of the published packages under `root/packages`, each
 * after the packages it depends on (a package is built against its
 * dependencies' types). New packages are picked up without touching the tests.
 */
export function publishedPackages(root: string): string[] {
  const manifests = new Map<string, Manifest>()
  for (const dir of readdirSync(join(root, 'packages')).sort()) {
    const manifest = JSON.parse(readFileSync(join(root, 'packages', dir, 'package.json'), 'utf8')) as Manifest
    if (manifest.private !== true) manifests.set(dir, manifest)
  }
  const dirOf = new Map([...manifests].map(([dir, m]) => [m.name, dir]))
  const ordered: string[] = []
  const visit = (dir: string, path: readonly string[]): void => {
    if (ordered.includes(dir)) return
    if (path.includes(dir)) throw new Error(`packages depend on each other in a cycle: ${[...path, dir].join(' → ')}`)
    for (const dependency of Object.keys(manifests.get(dir)!.dependencies ?? {})) {
      const inner = dirOf.get(dependency)
      if (inner !== undefined) visit(inner, [...path, dir])
    }
    ordered.push(dir)
  }
  for (const dir of manifests.keys()) visit(dir, [])
  return ordered
}
