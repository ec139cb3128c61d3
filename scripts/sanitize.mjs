// The native addons under AddressSanitizer and UndefinedBehaviorSanitizer:
//
//   npm run sanitize                      the suites below, then a short fuzz run
//   npm run sanitize -- --runs 5000       a longer fuzz run (frame sequences per data path)
//   npm run sanitize -- --runs 0 packages/redirect/test/accept.test.ts   these tests only
//   npm run sanitize -- --build           only build the sanitized addons
//
// 1. Builds both addons (packages/redirect, packages/proxy) from the sources
//    and flags their binding.gyp names, with -fsanitize=address,undefined,
//    into build/sanitize/ at the checkout's root: never over build/Release or
//    the committed prebuilds.
// 2. Runs, with the gcc sanitizer runtimes preloaded into every Node process
//    (LD_PRELOAD: a Node not built with ASan must load libasan before
//    anything else; scripts/sanitize-preload.mjs keeps it out of the other
//    programs the tests start) and every load of an addon turned into a load
//    of its sanitized build (the same preload): redirect's suites, every
//    test file whose path names native, the transport contract suite and
//    the HBONE header and path fuzz tests (or the vitest filters given);
//    then a short fixed-seed `npm run fuzz` of the HTTP/2 frame sequences
//    against the HBONE server on both data paths (--runs sequences each,
//    default 300, seed 21).
// 3. Fails when a sanitizer reported anything, when a run failed, or when
//    either sanitized addon was never loaded. AddressSanitizer writes its
//    reports to a file per process (log_path), so one in a child process
//    that a test expected to die is still seen; UndefinedBehaviorSanitizer
//    built together with it ignores log_path and writes to stderr, which is
//    read here as it passes through (the vitest workers' stderr included).
//
// Leak detection is off (ASAN_OPTIONS=detect_leaks=0): Node does not free
// its heap, isolates and handles at exit, by design, so LeakSanitizer would
// report thousands of Node's own allocations at every exit and bury ours.
// The addons' resources are bounded and counted by their own tests instead.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, rmSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { values, positionals } = parseArgs({
  options: { runs: { type: 'string', default: '300' }, seed: { type: 'string', default: '21' }, build: { type: 'boolean', default: false } },
  allowPositionals: true,
})
const started = Date.now()
const out = join(root, 'build', 'sanitize')
const reports = join(out, 'reports')
const loadedLog = join(out, 'loaded.txt')

// The suites that load the addons; kept to a few minutes under the sanitizers.
const SUITES = [
  'packages/redirect/',
  'native',
  'packages/proxy/test/transports.test.ts',
  'packages/proxy/test/hbone-headers.fuzz.test.ts',
  'packages/proxy/test/hbone-paths.fuzz.test.ts',
]
// The fuzz run's targets: the HTTP/2 frame sequences against both data paths.
const FUZZ = ['packages/proxy/test/hbone-h2.fuzz.test.ts']

const SANITIZE = ['-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer', '-g', '-O1']

function fail(message) {
  console.error(`sanitize: ${message}`)
  process.exit(1)
}

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', ...options })
  if (result.error !== undefined) fail(`${command}: ${result.error.message}`)
  return result.status ?? 1
}

/** The path of a gcc runtime library, as gcc itself finds it. */
function gccLibrary(name) {
  const result = spawnSync('gcc', [`-print-file-name=${name}`], { encoding: 'utf8' })
  const path = result.stdout?.trim() ?? ''
  if (result.status !== 0 || !path.startsWith('/') || !existsSync(path)) fail(`gcc has no ${name} (Debian: apt-get install gcc, which brings libasan and libubsan)`)
  return realpathSync(path)
}

/** Builds one package's addon as its binding.gyp says, with the sanitizers on; returns its path. */
function buildAddon(pkg) {
  const dir = join(root, 'packages', pkg)
  const [target] = JSON.parse(readFileSync(join(dir, 'binding.gyp'), 'utf8')).targets
  const file = join(out, `${target.target_name}.node`)
  const nodeInclude = join(dirname(process.execPath), '..', 'include', 'node')
  if (!existsSync(join(nodeInclude, 'node_api.h'))) fail(`this Node (${process.execPath}) ships no headers in ${nodeInclude}`)
  // -Werror stays with the ordinary build: the sanitizers' instrumentation may warn at -O1.
  const flags = [...target.cflags.filter((flag) => flag !== '-Werror' && !flag.startsWith('-O')), ...(target.cflags_c ?? []), ...SANITIZE]
  const args = [
    '-shared',
    '-fPIC',
    ...flags,
    ...target.defines.map((define) => `-D${define}`),
    `-I${nodeInclude}`,
    ...target.sources.map((source) => join(dir, source)),
    '-o',
    file,
    ...(target.ldflags ?? []),
    ...(target.libraries ?? []),
  ]
  if (run('gcc', args) !== 0) fail(`the sanitized build of ${target.target_name} failed`)
  return [target.target_name, file]
}

rmSync(out, { recursive: true, force: true })
mkdirSync(reports, { recursive: true })
const addons = Object.fromEntries(['redirect', 'proxy'].map(buildAddon))
console.log(`sanitize: built ${Object.values(addons).join(', ')} in ${((Date.now() - started) / 1000).toFixed(0)} s`)
if (values.build) process.exit(0)

const runtimes = [gccLibrary('libasan.so'), gccLibrary('libubsan.so')].join(':')
const env = {
  ...process.env,
  LD_PRELOAD: runtimes,
  AMBIENTKIT_SANITIZE_PRELOAD: runtimes,
  // Options set in the environment come last and win (e.g. ASAN_OPTIONS=disable_coredump=0 to keep a core).
  ASAN_OPTIONS: [`detect_leaks=0:abort_on_error=1:log_path=${join(reports, 'asan')}`, process.env.ASAN_OPTIONS].filter(Boolean).join(':'),
  UBSAN_OPTIONS: [`halt_on_error=1:print_stacktrace=1:log_path=${join(reports, 'ubsan')}`, process.env.UBSAN_OPTIONS].filter(Boolean).join(':'),
  NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import ${pathToFileURL(join(root, 'scripts', 'sanitize-preload.mjs')).href}`.trim(),
  AMBIENTKIT_SANITIZE_ADDONS: JSON.stringify(addons),
  AMBIENTKIT_SANITIZE_LOADED: loadedLog,
}

// What a sanitizer prints when it reports (UBSan: "file:line:col: runtime error: ...").
const REPORT = /runtime error: |ERROR: AddressSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer/
const printed = []

/** Runs Node with `args` under the sanitizers, passing its output on and keeping the lines that are reports. Resolves to its exit status. */
function runSanitized(args) {
  const child = spawn(process.execPath, args, { cwd: root, env, stdio: ['inherit', 'pipe', 'pipe'] })
  for (const [from, to] of [
    [child.stdout, process.stdout],
    [child.stderr, process.stderr],
  ]) {
    let partial = ''
    from.setEncoding('utf8').on('data', (text) => {
      to.write(text)
      const lines = (partial + text).split('\n')
      partial = lines.pop()
      printed.push(...lines.filter((line) => REPORT.test(line)))
    })
  }
  return new Promise((resolve) => child.once('close', (code) => resolve(code ?? 1)))
}

const failures = []
if ((await runSanitized([join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run', ...(positionals.length > 0 ? positionals : SUITES)])) !== 0) failures.push('the suites failed')
// fuzz.mjs's --runs is per parser property; its --sequences, the frame sequences per data path, are what this run is for.
const fuzzArgs = ['scripts/fuzz.mjs', '--runs', values.runs, '--sequences', values.runs, '--seed', values.seed, ...FUZZ]
if (values.runs !== '0' && (await runSanitized(fuzzArgs)) !== 0) failures.push(`the fuzz run failed (node ${fuzzArgs.join(' ')})`)

const found = readdirSync(reports).filter((name) => statSync(join(reports, name)).size > 0)
for (const name of found) {
  console.error(`\nsanitize: report ${name}:\n`)
  console.error(readFileSync(join(reports, name), 'utf8'))
}
if (found.length > 0) failures.push(`${found.length} AddressSanitizer report(s) in ${reports}`)
if (printed.length > 0) failures.push(`sanitizer reports in the output:\n  ${printed.join('\n  ')}`)
const loaded = existsSync(loadedLog) ? readFileSync(loadedLog, 'utf8') : ''
// Chosen tests may load one addon only; the default suites must load both.
if (positionals.length === 0) for (const name of Object.keys(addons)) if (!loaded.includes(` ${name}.node `)) failures.push(`the sanitized ${name} was never loaded`)
if (loaded === '') failures.push('no sanitized addon was ever loaded')

const seconds = ((Date.now() - started) / 1000).toFixed(0)
if (failures.length > 0) fail(`${failures.join('; ')} (${seconds} s)`)
console.log(`sanitize: no sanitizer report; ${loaded.split('\n').filter(Boolean).length} loads of the sanitized addons (${seconds} s)`)
