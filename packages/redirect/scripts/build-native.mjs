// The package's native addon: built from source, or kept as shipped.
//
//   node scripts/build-native.mjs [--force]
//     Builds it from source with node-gyp into build/Release, unless a build
//     there is newer than every input (setup runs this on every start).
//   node scripts/build-native.mjs --install [--optional]
//     npm's install step: keeps the prebuilt addon
//     (prebuilds/linux-<arch>/node.napi.<glibc|musl>.node) when it loads,
//     and builds from source only when none does. When neither works it
//     writes one line saying why and how to get it, and the install goes on
//     (--optional: the package runs without it; otherwise the package throws
//     that reason when first used).
//
// The same file in @ambientkit/redirect and @ambientkit/proxy (each ships its
// own copy): the addon is named by binding.gyp, the package by package.json.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs'
import { delimiter, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const target = JSON.parse(readFileSync(join(root, 'binding.gyp'), 'utf8')).targets[0].target_name
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).name
const built = join(root, 'build', 'Release', `${target}.node`)
const require = createRequire(import.meta.url)

/** musl or glibc, from what is mapped into this process (as the packages' loaders tell). */
function libc() {
  try {
    return /\/(ld-musl-|libc\.musl-)/.test(readFileSync('/proc/self/maps', 'utf8')) ? 'musl' : 'glibc'
  } catch {
    return 'glibc'
  }
}

/** Why `file` does not load here, or undefined when it does. */
function loadError(file) {
  if (!existsSync(file)) return 'not found'
  try {
    require(file)
    return undefined
  } catch (err) {
    return err.message.split('\n')[0]
  }
}

const onPath = (command) => (process.env.PATH ?? '').split(delimiter).some((dir) => dir !== '' && existsSync(join(dir, command)))

/** node-gyp rebuild; returns why it could not build, or undefined. `quiet`: its errors are summed up rather than shown. */
function build(quiet) {
  let nodeGyp = process.env.npm_config_node_gyp
  if (nodeGyp === undefined || !existsSync(nodeGyp)) {
    try {
      nodeGyp = require.resolve('node-gyp/bin/node-gyp.js')
    } catch {
      return 'node-gyp is not available'
    }
  }
  const compiler = process.env.CC ?? 'cc'
  const tools = { [`C compiler (${process.env.CC === undefined ? 'cc' : `CC=${compiler}`})`]: compiler, make: 'make', python3: 'python3' }
  const missing = Object.keys(tools).filter((name) => (tools[name].includes('/') ? !existsSync(tools[name]) : !onPath(tools[name])))
  if (missing.length > 0) return `no ${missing.join(', ').replace(/, ([^,]*)$/, ' or $1')} on PATH`
  // Against the headers of the running Node when it ships them (official builds and
  // Debian's do): node-gyp would otherwise download them.
  const nodeDir = join(dirname(process.execPath), '..')
  const headers = existsSync(join(nodeDir, 'include', 'node', 'node_api.h')) ? [`--nodedir=${nodeDir}`] : []
  const result = spawnSync(process.execPath, [nodeGyp, 'rebuild', '--silent', ...headers], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'ignore', quiet ? 'pipe' : 'inherit'] })
  if (result.status === 0) return undefined
  const lines = (result.stderr ?? '').split('\n').filter((line) => /error/i.test(line))
  return `the build failed${lines.length > 0 ? `: ${lines[0].trim()}` : ''}`
}

function install(optional) {
  const prebuilt = join(root, 'prebuilds', `${process.platform}-${process.arch}`, `node.napi.${libc()}.node`)
  // A build from source (npm rebuild) is what the package loads first: kept while it loads.
  if (loadError(built) === undefined) return
  const prebuiltError = loadError(prebuilt)
  if (prebuiltError === undefined) return
  const buildError = build(true) ?? loadError(built)
  if (buildError === undefined) return
  const without = optional ? 'it runs without it (HBONE on the Node data path)' : 'it cannot be used without it'
  process.stderr.write(
    `${pkg}: no native addon (prebuilt for ${process.platform}-${process.arch} ${libc()}: ${prebuiltError}; from source: ${buildError}); ${without}. ` +
      `To build it, install a C compiler, make, python3${target === 'ambient_hbone' ? ' and the nghttp2 headers (Debian/Ubuntu: apt-get install build-essential python3 libnghttp2-dev)' : ' (Debian/Ubuntu: apt-get install build-essential python3)'}, then run npm rebuild ${pkg}\n`,
  )
}

function develop(force) {
  const inputs = [join(root, 'binding.gyp'), ...readdirSync(join(root, 'native')).map((name) => join(root, 'native', name))]
  const newestInput = Math.max(...inputs.map((file) => statSync(file).mtimeMs))
  if (existsSync(built) && statSync(built).mtimeMs > newestInput && !force) return 0
  const error = build(false)
  if (error === undefined) return 0
  console.error(`${pkg}: ${error}`)
  return 1
}

if (process.argv.includes('--install')) install(process.argv.includes('--optional'))
else process.exitCode = develop(process.argv.includes('--force'))
