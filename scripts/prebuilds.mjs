#!/usr/bin/env node
// Builds the prebuilt addons the packages ship (`npm run prebuilds`): both
// addons (@ambientkit/redirect, @ambientkit/proxy) for linux x64 and arm64,
// glibc and musl, into each package's prebuilds/linux-<arch>/node.napi.<libc>.node
// (node-gyp-build's layout), with prebuilds/MANIFEST.json saying what they
// were built from. The sources, defines and flags are each package's
// binding.gyp, as for a build from source.
//
// Reproducible from Debian's archive alone: the C libraries come from
// Debian 11 (bullseye: glibc 2.31, whose symbol versions the addons use
// stay at 2.28 or below, so they load on RHEL 8 and Ubuntu 20.04 too;
// musl 1.2.2), downloaded with apt-get into a private cache (nothing is
// installed), with bullseye's kernel and nghttp2 headers. Compilers: the
// machine's gcc and Debian's gcc-aarch64-linux-gnu; musl through a gcc specs
// file, as musl-gcc does it. Node's own headers (node_api.h, uv.h, OpenSSL)
// are those of the Node running this script: the addon then asks at load
// for that OpenSSL and libuv major.minor or later, so build with a Node
// whose OpenSSL and libuv are no newer than those of the oldest release of
// every supported line: Node 20's (OpenSSL 3.0, libuv 1.46; the committed
// prebuilds say which in MANIFEST.json), since later Node 22 releases moved
// to OpenSSL 3.5 and libuv 1.51 that early ones lack.
//
//   node scripts/prebuilds.mjs [--cache DIR] [--only redirect|proxy] [--target ARCH-LIBC]
//   node scripts/prebuilds.mjs --variant faults|missing-symbol|nghttp2-too-new --out FILE
//
// --variant builds the HBONE addon for this machine (its own C library and
// headers, as a build from source does) with a test-only define, for the
// tests that show what such a build does.

import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { dirname, isAbsolute, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')

/** Where downloads and extracted Debian packages are kept between runs. */
export const CACHE = join(ROOT, 'node_modules', '.cache', 'ambientkit-prebuilds')

/** The Debian release the C libraries and headers come from, and its apt source. */
export const DEBIAN = { suite: 'bullseye', uri: 'http://deb.debian.org/debian', keyring: '/usr/share/keyrings/debian-archive-keyring.gpg' }

/** The most recent glibc symbol version a glibc prebuild may ask for: RHEL 8's glibc. */
export const GLIBC_CEILING = '2.28'

export const TARGETS = [
  { name: 'x64-glibc', arch: 'x64', libc: 'glibc', deb: 'amd64', gnu: 'x86_64-linux-gnu', cc: 'gcc', machine: 'Advanced Micro Devices X86-64' },
  { name: 'arm64-glibc', arch: 'arm64', libc: 'glibc', deb: 'arm64', gnu: 'aarch64-linux-gnu', cc: 'aarch64-linux-gnu-gcc', machine: 'AArch64' },
  { name: 'x64-musl', arch: 'x64', libc: 'musl', deb: 'amd64', gnu: 'x86_64-linux-gnu', musl: 'x86_64-linux-musl', loader: 'ld-musl-x86_64.so.1', cc: 'gcc', machine: 'Advanced Micro Devices X86-64' },
  { name: 'arm64-musl', arch: 'arm64', libc: 'musl', deb: 'arm64', gnu: 'aarch64-linux-gnu', musl: 'aarch64-linux-musl', loader: 'ld-musl-aarch64.so.1', cc: 'aarch64-linux-gnu-gcc', machine: 'AArch64' },
]

export const PACKAGES = [
  { name: 'redirect', dir: join(ROOT, 'packages', 'redirect') },
  { name: 'proxy', dir: join(ROOT, 'packages', 'proxy') },
]

/** Where a package's prebuild for `target` lives. */
export const prebuildPath = (pkg, target) => join(pkg.dir, 'prebuilds', `linux-${target.arch}`, `node.napi.${target.libc}.node`)

/** What a prebuild is built from: the package's binding.gyp and C sources, and this script. A prebuild is stale when this changes. */
export function sourceDigest(pkg) {
  const hash = createHash('sha256')
  const sources = readdirSync(join(pkg.dir, 'native')).filter((name) => /\.[ch]$/.test(name))
  const files = ['binding.gyp', ...sources.sort().map((name) => join('native', name))]
  for (const file of files) hash.update(`${file}\n`).update(readFileSync(join(pkg.dir, file)))
  hash.update(readFileSync(fileURLToPath(import.meta.url)))
  return hash.digest('hex')
}

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...options })
  if (result.error) throw new Error(`${command}: ${result.error.message}`)
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}):\n${result.stderr}${result.stdout}`)
  return result.stdout
}

/**
 * Downloads the Debian packages the targets need (apt-get with a private
 * state and cache under `cache`, the machine's apt untouched) and extracts
 * each into `cache/root/<deb arch>/`. Returns that folder for an architecture.
 */
export function debianRoots(cache, archs) {
  const apt = join(cache, 'apt')
  for (const dir of ['lists/partial', 'cache/archives/partial', 'etc', 'debs']) mkdirSync(join(apt, dir), { recursive: true })
  writeFileSync(join(apt, 'status'), '')
  writeFileSync(join(apt, 'etc', 'sources.list'), `deb [arch=${archs.join(',')} signed-by=${DEBIAN.keyring}] ${DEBIAN.uri} ${DEBIAN.suite} main\n`)
  const options = [
    `Dir::Etc::SourceList=${join(apt, 'etc', 'sources.list')}`,
    'Dir::Etc::SourceParts=/dev/null',
    `Dir::State::Lists=${join(apt, 'lists')}`,
    `Dir::State::Status=${join(apt, 'status')}`,
    `Dir::Cache=${join(apt, 'cache')}`,
    'Debug::NoLocking=1',
    'APT::Sandbox::User=root',
    ...archs.map((arch) => `APT::Architectures::=${arch}`),
  ].flatMap((option) => ['-o', option])
  // libstdc++6 and libgcc-s1 are not built against: with libc6 they run Node itself on bullseye's glibc (tests).
  const packages = ['libc6', 'libc6-dev', 'linux-libc-dev', 'musl', 'musl-dev', 'libnghttp2-dev', 'libstdc++6', 'libgcc-s1']
  const wanted = archs.flatMap((arch) => packages.map((name) => `${name}:${arch}`))
  const debs = join(apt, 'debs')
  const have = () => readdirSync(debs).filter((file) => file.endsWith('.deb'))
  if (have().length < wanted.length) {
    console.log(`prebuilds: downloading ${wanted.length} Debian ${DEBIAN.suite} packages`)
    run('apt-get', [...options, '-qq', 'update'])
    run('apt-get', [...options, '-qq', 'download', ...wanted], { cwd: debs })
  }
  const roots = {}
  for (const arch of archs) {
    const root = join(cache, 'root', arch)
    if (!existsSync(join(root, '.done'))) {
      rmSync(root, { recursive: true, force: true })
      mkdirSync(root, { recursive: true })
      for (const deb of have().filter((file) => file.endsWith(`_${arch}.deb`) || file.endsWith('_all.deb'))) run('dpkg-deb', ['-x', join(debs, deb), root])
      rootLinks(root, root)
      writeFileSync(join(root, '.done'), '')
    }
    roots[arch] = root
  }
  const versions = Object.fromEntries(have().map((file) => file.replace(/\.deb$/, '').split('_')).map(([name, version, arch]) => [`${name}:${arch}`, decodeURIComponent(version)]))
  return { roots, versions }
}

/** Points the absolute symbolic links of an extracted package tree (libdl.so -> /lib/...) into the tree, not at this machine's files. */
function rootLinks(root, dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) rootLinks(root, path)
    else if (entry.isSymbolicLink()) {
      const target = readlinkSync(path)
      if (!isAbsolute(target)) continue
      rmSync(path)
      symlinkSync(relative(dirname(path), join(root, target)), path)
    }
  }
}

/** A gcc specs file that compiles and links against the musl in `root`, as musl-gcc's does. */
function muslSpecs(cache, target, root) {
  const include = join(root, 'usr', 'include', target.musl)
  const kernel = [join(root, 'usr', 'include'), join(root, 'usr', 'include', target.gnu)]
  const lib = join(root, 'usr', 'lib', target.musl)
  const system = [include, ...kernel].map((dir) => `-isystem ${dir}`).join(' ')
  const specs = `%rename cpp_options old_cpp_options

*cpp_options:
-nostdinc ${system} -isystem include%s %(old_cpp_options)

*cc1:
%(cc1_cpu) -nostdinc ${system} -isystem include%s

*link_libgcc:
-L${join(root, 'lib', target.musl)} -L${lib} -L .%s

*libgcc:
libgcc.a%s %:if-exists(libgcc_eh.a%s)

*startfile:
%{!shared: ${lib}/Scrt1.o} ${lib}/crti.o crtbeginS.o%s

*endfile:
crtendS.o%s ${lib}/crtn.o

*link:
-dynamic-linker /lib/${target.loader} -nostdlib %{shared:-shared} %{static:-static} %{rdynamic:-export-dynamic}

`
  const file = join(cache, `musl-${target.arch}.specs`)
  writeFileSync(file, specs)
  return file
}

/** The compiler's arguments for `target`, before the package's own. */
function targetFlags(cache, target, root) {
  // Only the nghttp2 headers from the Debian root, for glibc and musl alike: a -I of all of
  // usr/include would put glibc's headers before musl's.
  const nghttp2 = join(cache, 'nghttp2-include')
  if (!existsSync(join(nghttp2, 'nghttp2', 'nghttp2.h'))) {
    mkdirSync(join(nghttp2, 'nghttp2'), { recursive: true })
    for (const file of ['nghttp2.h', 'nghttp2ver.h']) writeFileSync(join(nghttp2, 'nghttp2', file), readFileSync(join(root, 'usr', 'include', 'nghttp2', file)))
  }
  // gcc's aarch64 atomics otherwise call libgcc helpers whose set-up asks glibc's
  // __getauxval, which musl does not have.
  const common = [`-I${nghttp2}`, ...(target.arch === 'arm64' ? ['-mno-outline-atomics'] : [])]
  if (target.libc === 'glibc') {
    // gcc looks in its own multiarch folders (this machine's glibc) before the sysroot's: the
    // sysroot's start files and libraries are named first.
    const libs = [join(root, 'usr', 'lib', target.gnu), join(root, 'lib', target.gnu)]
    return [...common, `--sysroot=${root}`, `-B${libs[0]}/`, ...libs.map((dir) => `-L${dir}`)]
  }
  return [...common, '-specs', muslSpecs(cache, target, root)]
}

/** The running Node's headers (node_api.h, uv.h, OpenSSL), which every prebuild compiles against. */
export function nodeHeaders() {
  const dir = join(dirname(process.execPath), '..', 'include', 'node')
  if (!existsSync(join(dir, 'node_api.h'))) throw new Error(`no Node headers next to ${process.execPath} (expected ${dir}/node_api.h)`)
  return dir
}

/** Compiles and links one package's addon for `target` into `out`, from its binding.gyp. */
export function compile(pkg, target, flags, out, extraDefines = []) {
  const gyp = JSON.parse(readFileSync(join(pkg.dir, 'binding.gyp'), 'utf8')).targets[0]
  const args = [
    ...flags,
    `-I${nodeHeaders()}`,
    ...[...gyp.defines, ...extraDefines].map((define) => `-D${define}`),
    ...gyp.cflags,
    ...(gyp.cflags_c ?? []),
    '-fPIC',
    '-shared',
    '-s',
    ...gyp.sources.map((source) => join(pkg.dir, source)),
    ...(gyp.ldflags ?? []),
    ...(gyp.libraries ?? []),
    '-o',
    `${out}.tmp`,
  ]
  mkdirSync(dirname(out), { recursive: true })
  run(target.cc, args)
  renameSync(`${out}.tmp`, out)
}

/** What a built addon asks of its system: its machine, needed libraries, BIND_NOW, and the most recent GLIBC_ symbol version. */
export function inspect(file) {
  const header = run('readelf', ['-h', file])
  const dynamic = run('readelf', ['-d', file])
  const versions = run('readelf', ['-V', file])
  const glibc = [...versions.matchAll(/Name: GLIBC_([0-9.]+)/g)].map((match) => match[1])
  const newest = glibc.sort((a, b) => compareVersions(b, a))[0] ?? null
  return {
    machine: /Machine:\s+(.+)/.exec(header)?.[1]?.trim(),
    needed: [...dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[(.+)\]/g)].map((match) => match[1]),
    bindNow: /\(FLAGS\)\s+BIND_NOW/.test(dynamic) || /FLAGS_1.*\bNOW\b/.test(dynamic),
    newestGlibc: newest,
  }
}

export function compareVersions(a, b) {
  const x = a.split('.').map(Number)
  const y = b.split('.').map(Number)
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0)
  return 0
}

/** Throws unless `file` is what a prebuild for `target` must be. */
export function check(file, target) {
  const found = inspect(file)
  const problems = []
  if (found.machine !== target.machine) problems.push(`machine ${found.machine}, expected ${target.machine}`)
  if (!found.bindNow) problems.push('not linked with -z now')
  if (target.libc === 'glibc') {
    if (found.newestGlibc === null || compareVersions(found.newestGlibc, GLIBC_CEILING) > 0) problems.push(`needs GLIBC_${found.newestGlibc}, more than ${GLIBC_CEILING}`)
    if (found.needed.some((lib) => !/^lib(c|dl|pthread)\.so\.[0-9]+$/.test(lib))) problems.push(`needs ${found.needed.join(', ')}`)
  } else if (found.newestGlibc !== null || found.needed.join() !== 'libc.so') {
    problems.push(`not a musl build: needs ${found.needed.join(', ')}${found.newestGlibc ? ` and GLIBC_${found.newestGlibc}` : ''}`)
  }
  if (problems.length > 0) throw new Error(`${file}: ${problems.join('; ')}`)
  return found
}

/** Test-only builds of the HBONE addon for this machine: what each define does is in native/addon.c and native/js.c. */
const VARIANTS = {
  faults: ['HBONE_FAULTS'],
  'missing-symbol': ['HBONE_TEST_MISSING_SYMBOL'],
  'nghttp2-too-new': ['HBONE_NGHTTP2_MIN=0x01ff00'],
}

function main() {
  const { values } = parseArgs({
    options: {
      cache: { type: 'string', default: CACHE },
      only: { type: 'string' },
      target: { type: 'string' },
      variant: { type: 'string' },
      out: { type: 'string' },
    },
  })
  const cache = values.cache
  mkdirSync(cache, { recursive: true })
  if (values.variant !== undefined) {
    const defines = VARIANTS[values.variant]
    if (defines === undefined || values.out === undefined) throw new Error(`--variant ${Object.keys(VARIANTS).join('|')} --out FILE`)
    // For this machine only, with its own C library and nghttp2 headers, as a build from source.
    compile(PACKAGES[1], { cc: process.env.CC ?? 'cc' }, [], values.out, defines)
    return
  }
  const targets = TARGETS.filter((target) => values.target === undefined || target.name === values.target)
  const packages = PACKAGES.filter((pkg) => values.only === undefined || pkg.name === values.only)
  if (targets.length === 0 || packages.length === 0) throw new Error(`unknown --target or --only (targets: ${TARGETS.map((t) => t.name).join(', ')})`)
  const { roots, versions } = debianRoots(cache, [...new Set(targets.map((target) => target.deb))])
  for (const pkg of packages) {
    const manifestFile = join(pkg.dir, 'prebuilds', 'MANIFEST.json')
    const manifest = existsSync(manifestFile) ? JSON.parse(readFileSync(manifestFile, 'utf8')) : { prebuilds: {} }
    manifest.sources = sourceDigest(pkg)
    manifest.node = process.version
    manifest.openssl = process.versions.openssl
    manifest.uv = process.versions.uv
    manifest.debian = DEBIAN.suite
    for (const target of targets) {
      const out = prebuildPath(pkg, target)
      compile(pkg, target, targetFlags(cache, target, roots[target.deb]), out)
      const found = check(out, target)
      const libc = target.libc === 'glibc' ? `libc6:${target.deb}` : `musl-dev:${target.deb}`
      manifest.prebuilds[`linux-${target.arch}/node.napi.${target.libc}.node`] = {
        compiler: run(target.cc, ['-dumpfullversion']).trim(),
        libc: `${libc} ${versions[libc]}`,
        nghttp2Headers: versions[`libnghttp2-dev:${target.deb}`],
        needed: found.needed,
        newestGlibc: found.newestGlibc,
        sha256: createHash('sha256').update(readFileSync(out)).digest('hex'),
      }
      console.log(`prebuilds: ${pkg.name} ${target.name} ${found.newestGlibc ? `(GLIBC_${found.newestGlibc})` : `(${found.needed.join(', ')})`}`)
    }
    writeFileSync(manifestFile, `${JSON.stringify(manifest, null, 2)}\n`)
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    main()
  } catch (err) {
    console.error(`prebuilds: ${err.message}`)
    process.exit(1)
  }
}
