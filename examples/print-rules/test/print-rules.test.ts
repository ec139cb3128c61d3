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

/** Runs the example as its own process; as an unprivileged user when we are root, to show it needs none. */
function printRules(args: readonly string[]): Promise<Run> {
  const unprivileged = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {}
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [tsx, main, ...args],
      { cwd: root, env: { ...process.env, HOME: '/tmp', TSX_DISABLE_CACHE: '1' }, ...unprivileged },
      (err, stdout, stderr) => resolve({ code: err === null ? 0 : ((err as { code?: number }).code ?? 1), stdout, stderr }),
    )
  })
}

describe('examples/print-rules', () => {
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
