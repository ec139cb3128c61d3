import { execFileSync, spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'
import ignore from '@balena/dockerignore'
import { describe, expect, it } from 'vitest'

/**
 * No Docker engine runs here, so the image's build stage is checked by
 * doing what `docker build` would do in it: the context is a clean copy of
 * the repository (the files git has, less what .dockerignore leaves out),
 * COPY copies from it, RUN runs in the scratch directory. The apt-get step
 * is not run (it would change this machine): the test checks instead that
 * this machine has the packages it names, and that they are the ones
 * scripts/setup.sh says a build needs, so the image's build has them too.
 */

const root = fileURLToPath(new URL('../../../', import.meta.url))
const dockerfile = readFileSync(join(root, 'examples/kubernetes/Dockerfile'), 'utf8')

interface Instruction {
  readonly keyword: string
  readonly args: string
}

/** The Dockerfile's instructions, continuation lines joined, comments dropped. */
function instructions(text: string): Instruction[] {
  const out: Instruction[] = []
  let current = ''
  for (const line of text.split('\n')) {
    if (current === '' && (line.trim() === '' || line.trimStart().startsWith('#'))) continue
    current += line.endsWith('\\') ? `${line.slice(0, -1)} ` : line
    if (line.endsWith('\\')) continue
    const [keyword = '', ...rest] = current.trim().split(/\s+/)
    out.push({ keyword: keyword.toUpperCase(), args: rest.join(' ') })
    current = ''
  }
  return out
}

const stages = instructions(dockerfile).reduce<Instruction[][]>((list, instruction) => {
  if (instruction.keyword === 'FROM') list.push([])
  list.at(-1)?.push(instruction)
  return list
}, [])
const buildStage = stages[0]!

/** The Debian packages an `apt-get install` command names. */
function aptPackages(command: string): string[] {
  const install = /apt-get install ([^&]*)/.exec(command)?.[1] ?? ''
  return install.split(/\s+/).filter((word) => word !== '' && !word.startsWith('-'))
}

/** What scripts/setup.sh installs for building the native addons: its headers' packages and node-gyp's tools. */
function buildPackages(): string[] {
  const setup = readFileSync(join(root, 'scripts/setup.sh'), 'utf8')
  const headers = /declare -A headers=\(([^)]*)\)/.exec(setup)?.[1] ?? ''
  return [...[...headers.matchAll(/\]=(\S+)/g)].map((m) => m[1]!), 'python3', 'make', 'g++']
}

/** The build context: files git has (tracked, or new and not ignored), less what .dockerignore excludes. */
function context(): string[] {
  const files = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '-z'], { cwd: root, encoding: 'utf8' }).split('\0')
  const ignored = ignore().add(readFileSync(join(root, '.dockerignore'), 'utf8'))
  return files.filter((file) => file !== '' && existsSync(join(root, file)) && !ignored.ignores(file))
}

describe('the Dockerfile of the node image', () => {
  it('keeps host dependencies and build output out of its context', () => {
    const ignored = ignore().add(readFileSync(join(root, '.dockerignore'), 'utf8'))
    for (const path of ['node_modules/yaml/package.json', 'packages/redirect/build/Release/ambient_redirect.node', 'packages/proxy/dist/index.js', 'examples/kubernetes/dist/main.js', '.git/HEAD']) {
      expect(ignored.ignores(path), path).toBe(true)
    }
    expect(ignored.ignores('packages/proxy/native/hbone.c')).toBe(false)
  })

  it('installs in its build stage what building the native addons needs', () => {
    const installed = buildStage.filter((i) => i.keyword === 'RUN').flatMap((i) => aptPackages(i.args))
    expect(installed).toEqual(expect.arrayContaining(buildPackages()))
  })

  it('builds: its build stage, run in a clean copy of the repository, leaves a runnable entry point', () => {
    const scratch = mkdtempSync(join(tmpdir(), 'ak-docker-build-'))
    try {
      const files = context()
      let workdir = scratch
      // npm and node-gyp need no more of the environment than a base image has.
      // A clean environment, but for what reaching the registry takes here (a proxy, the CA of one that inspects TLS),
      // which a docker build gets from the daemon's network.
      const network = Object.fromEntries(
        Object.entries(process.env).filter(([name]) => /^(NODE_EXTRA_CA_CERTS|https?_proxy|no_proxy|npm_config_(cafile|registry|proxy|https_proxy))$/i.test(name)),
      )
      const env = { ...network, PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? scratch, TMPDIR: tmpdir() }
      for (const { keyword, args } of buildStage) {
        if (keyword === 'WORKDIR') {
          workdir = join(scratch, args)
          mkdirSync(workdir, { recursive: true })
        } else if (keyword === 'COPY') {
          const [dest = '', ...sources] = args.split(/\s+/).reverse()
          for (const source of sources) {
            const prefix = posix.normalize(source)
            const matched = files.filter((file) => file === prefix || file.startsWith(`${prefix}/`))
            expect(matched.length, `COPY ${source}: nothing in the context`).toBeGreaterThan(0)
            for (const file of matched) {
              const target = file === prefix ? join(workdir, dest, posix.basename(file)) : join(workdir, dest, file.slice(prefix.length + 1))
              mkdirSync(dirname(target), { recursive: true })
              copyFileSync(join(root, file), target)
            }
          }
        } else if (keyword === 'RUN' && args.includes('apt-get install')) {
          for (const pkg of aptPackages(args)) {
            const status = spawnSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' }).stdout
            expect(status, `Debian package ${pkg} (scripts/setup.sh installs it)`).toBe('install ok installed')
          }
        } else if (keyword === 'RUN') {
          const run = spawnSync('sh', ['-c', args], { cwd: workdir, env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
          expect(run.status, `RUN ${args}\n${run.stdout.slice(-4000)}\n${run.stderr.slice(-4000)}`).toBe(0)
        }
      }
      // The runtime stage copies /src as it is: the entry point must run on production dependencies alone.
      const entrypoint = /ENTRYPOINT \["node", "\/app\/([^"]+)"\]/.exec(dockerfile)?.[1]
      expect(entrypoint).toBe('examples/kubernetes/dist/main.js')
      const help = spawnSync('node', [join(workdir, entrypoint!), '--help'], { cwd: workdir, env: { ...env, NODE_ENV: 'production' }, encoding: 'utf8' })
      expect([help.status, help.stderr]).toEqual([0, ''])
      expect(help.stdout).toMatch(/^usage: node dist\/main.js \[--config <file>\]/)
      for (const addon of ['packages/redirect/build/Release/ambient_redirect.node', 'packages/proxy/build/Release/ambient_hbone.node']) {
        expect(existsSync(join(workdir, addon)), addon).toBe(true)
      }
      expect(existsSync(join(workdir, 'node_modules/vitest')), 'dev dependencies pruned').toBe(false)
    } finally {
      rmSync(scratch, { recursive: true, force: true })
    }
  }, 900_000)
})
