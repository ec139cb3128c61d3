// Loaded into every Node the sanitizer run starts (NODE_OPTIONS=--import),
// by scripts/sanitize.mjs:
//
// - Each load of an ambientkit addon (a build from source or a prebuilt one)
//   becomes a load of its sanitized build, so the packages' own loaders run
//   unchanged. AMBIENTKIT_SANITIZE_ADDONS names the sanitized builds (JSON:
//   addon name → path); every redirected load is appended to
//   AMBIENTKIT_SANITIZE_LOADED, which the run checks to prove they were used.
// - The sanitizer runtimes (AMBIENTKIT_SANITIZE_PRELOAD) are preloaded into
//   the Node processes it starts and into nothing else: programs the tests
//   run (ip, nft, go, python3) were not built for them, and ip's own
//   overlapping strncpy would abort it under AddressSanitizer.
import childProcess from 'node:child_process'
import { appendFileSync } from 'node:fs'
import { syncBuiltinESMExports } from 'node:module'
import { basename, sep } from 'node:path'

const addons = JSON.parse(process.env.AMBIENTKIT_SANITIZE_ADDONS ?? '{}')
const loadedLog = process.env.AMBIENTKIT_SANITIZE_LOADED
const runtimes = process.env.AMBIENTKIT_SANITIZE_PRELOAD
// The package directory names whose prebuilds/ hold each addon.
const packages = { ambient_hbone: `${sep}proxy${sep}prebuilds${sep}`, ambient_redirect: `${sep}redirect${sep}prebuilds${sep}` }

function sanitized(file) {
  const name = basename(file, '.node')
  if (addons[name] !== undefined && file.includes(`${sep}build${sep}Release${sep}`)) return addons[name]
  for (const [addon, marker] of Object.entries(packages)) if (addons[addon] !== undefined && file.includes(marker)) return addons[addon]
  return undefined
}

const dlopen = process.dlopen
process.dlopen = function (module, file, ...rest) {
  const replacement = typeof file === 'string' ? sanitized(file) : undefined
  if (replacement !== undefined && loadedLog !== undefined) appendFileSync(loadedLog, `${process.pid} ${basename(replacement)} for ${file}\n`)
  return dlopen.call(this, module, replacement ?? file, ...rest)
}

// A Node binary anywhere in the command: `node x.mjs`, `ip netns exec ns node ...`, `sh -c "node ..."`.
const isNode = (word) => typeof word === 'string' && (word === process.execPath || basename(word) === 'node' || /(^|[\s/])node(\s|$)/.test(word))
const startsNode = (file, args) => isNode(file) || (Array.isArray(args) && args.some(isNode))

/** `env` with LD_PRELOAD naming the runtimes when the command starts Node, and without them otherwise. */
function envFor(env, file, args) {
  const rest = Object.fromEntries(Object.entries(env ?? process.env).filter(([key]) => key !== 'LD_PRELOAD'))
  return startsNode(file, args) ? { ...rest, LD_PRELOAD: runtimes } : rest
}

if (runtimes !== undefined) {
  delete process.env.LD_PRELOAD
  // spawn, execFile, exec and fork all end here, with the environment already as pairs.
  const spawn = childProcess.ChildProcess.prototype.spawn
  childProcess.ChildProcess.prototype.spawn = function (options) {
    const env = Object.fromEntries((options.envPairs ?? []).map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)]))
    const envPairs = Object.entries(envFor(env, options.file, options.args)).map(([key, value]) => `${key}=${value}`)
    return spawn.call(this, { ...options, envPairs })
  }
  // The synchronous ones: each given the environment its command needs.
  for (const name of ['spawnSync', 'execFileSync']) {
    const original = childProcess[name]
    childProcess[name] = function (file, args, options) {
      if (!Array.isArray(args)) return original.call(this, file, [], { ...args, env: envFor(args?.env, file, []) })
      return original.call(this, file, args, { ...options, env: envFor(options?.env, file, args) })
    }
  }
  const execSync = childProcess.execSync
  childProcess.execSync = function (command, options) {
    return execSync.call(this, command, { ...options, env: envFor(options?.env, command, []) })
  }
  syncBuiltinESMExports()
}
