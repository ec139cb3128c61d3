import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const root = fileURLToPath(new URL('../../..', import.meta.url))
const main = fileURLToPath(new URL('../src/main.ts', import.meta.url))
const tsx = fileURLToPath(new URL('../../../node_modules/tsx/dist/cli.mjs', import.meta.url))

interface Run {
  code: number
  stdout: string
  stderr: string
}

/**
 * Runs `args` as a process with no privilege at all: as root, through
 * setpriv with every capability dropped (bounding set included, so exec
 * cannot regain them). The same user, not another one: a checkout in a
 * private home directory (mode 0700) stays readable, where uid 65534 could
 * not read it.
 */
function unprivileged(args: readonly string[]): { file: string; args: string[] } {
  if (process.getuid?.() !== 0) return { file: args[0]!, args: args.slice(1) }
  return { file: 'setpriv', args: ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--no-new-privs', '--', ...args] }
}

function runUnprivileged(args: readonly string[]): Promise<Run> {
  const command = unprivileged(args)
  return new Promise((resolve) => {
    execFile(command.file, command.args, { cwd: root, env: { ...process.env, TSX_DISABLE_CACHE: '1' } }, (err, stdout, stderr) =>
      resolve({ code: err === null ? 0 : ((err as { code?: number }).code ?? 1), stdout, stderr }),
    )
  })
}

/** Runs the example as its own process, without privileges, to show it needs none. */
const printRules = (args: readonly string[]): Promise<Run> => runUnprivileged([process.execPath, tsx, main, ...args])

describe('examples/print-rules', () => {
  it('runs with no capability', async () => {
    const run = await runUnprivileged([process.execPath, '-p', "/^CapEff:\\s*(\\w+)/m.exec(require('node:fs').readFileSync('/proc/self/status', 'utf8'))[1]"])
    expect(run.stdout.trim()).toBe('0000000000000000')
  })

  it('prints iptables-restore input for both families and the nft script, without root', async () => {
    const run = await printRules([])
    expect(run.stderr).toBe('')
    expect(run.code).toBe(0)
    expect(run.stdout).toContain('# iptables-restore --noflush (iptables)\n*mangle\n')
    expect(run.stdout).toContain('# iptables-restore --noflush (ip6tables)\n*mangle\n')
    expect(run.stdout).toContain('-A AMBIENTKIT_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001')
    expect(run.stdout).toContain('# nft -f -\nadd table inet ambientkit\n')
  })

  it('follows a configuration and a backend choice', async () => {
    const run = await printRules(['--backend', 'nftables', '--config', '{"captureDns":true,"ipv6":false}'])
    expect(run.code).toBe(0)
    expect(run.stdout).not.toContain('iptables-restore')
    expect(run.stdout).toContain('redirect to :15053')
    expect(run.stdout).not.toContain('ip6 ')
  })

  it('explains each rule', async () => {
    const run = await printRules(['--explain'])
    expect(run.code).toBe(0)
    expect(run.stdout).toContain('# nat output (ipv4 only): All other outbound TCP')
    expect(run.stdout).toContain('ip rule add fwmark 0x111/0xfff pref 32764 lookup 100')
  })

  it('refuses a bad configuration with status 2, naming the option and value', async () => {
    const run = await printRules(['--config', '{"outboundPort":70000}'])
    expect(run.code).toBe(2)
    expect(run.stderr).toContain('ERR_AMBIENT_REDIRECT_INVALID_CONFIG')
    expect(run.stderr).toContain('outboundPort')
    expect(run.stderr).toContain('70000')
    expect(run.stdout).toBe('')
  })
})
