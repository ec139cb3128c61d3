// Builds the N-API addon with node-gyp, unless build/Release already holds a
// .node newer than every input: setup runs this on every start and must be quick.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const output = join(root, 'build', 'Release', 'ambient_hbone.node')
const inputs = [join(root, 'binding.gyp'), ...readdirSync(join(root, 'native')).map((name) => join(root, 'native', name))]

const newestInput = Math.max(...inputs.map((file) => statSync(file).mtimeMs))
if (existsSync(output) && statSync(output).mtimeMs > newestInput && !process.argv.includes('--force')) process.exit(0)

let nodeGyp
try {
  nodeGyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js')
} catch {
  console.error('proxy: node-gyp is not installed; run npm install at the repository root')
  process.exit(1)
}
// Build against the headers of the running Node when it ships them (Debian's
// and the official tarballs do): node-gyp would otherwise download them.
const nodeDir = join(dirname(process.execPath), '..')
const headers = existsSync(join(nodeDir, 'include', 'node', 'node_api.h')) ? [`--nodedir=${nodeDir}`] : []
const result = spawnSync(process.execPath, [nodeGyp, 'rebuild', '--silent', ...headers], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] })
process.exit(result.status ?? 1)
