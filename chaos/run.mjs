#!/usr/bin/env node
// Entry point of `npm run chaos`: checks what the run needs (root, ip, nft,
// tc, tcpdump, iptables), gives it a mesh prefix and state directory of its
// own (so it can run beside a demo), then runs chaos/chaos.ts with the
// package sources (tsx with the repository's tsconfig).
import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { constants } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')
const problems = []
if (process.getuid?.() !== 0) problems.push('The chaos run builds network namespaces and breaks them on purpose: it must run as root.\n  Run: sudo npm run chaos')
const tools = { ip: 'iproute2', tc: 'iproute2', nft: 'nftables', iptables: 'iptables', tcpdump: 'tcpdump', nsenter: 'util-linux' }
const missing = Object.entries(tools).filter(([command]) => spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status !== 0)
if (missing.length > 0) problems.push(`Missing commands: ${missing.map(([c]) => c).join(', ')}.\n  Install them: sudo apt-get install -y ${[...new Set(missing.map(([, p]) => p))].join(' ')}`)
if (!existsSync(join(root, 'node_modules', 'tsx'))) problems.push('The npm packages are not installed.\n  Run: npm ci   (or: sudo npm run setup)')
if (problems.length > 0 && !process.argv.includes('--help')) {
  for (const problem of problems) console.error(problem)
  process.exit(1)
}
const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'chaos.ts'), ...process.argv.slice(2)], {
  cwd: root,
  stdio: 'inherit',
  env: {
    ...process.env,
    AMBIENTKIT_LOCAL_PREFIX: process.env.AMBIENTKIT_LOCAL_PREFIX ?? 'akc',
    AMBIENTKIT_LOCAL_STATE_DIR: process.env.AMBIENTKIT_LOCAL_STATE_DIR ?? '/run/ambientkit-chaos',
    TSX_TSCONFIG_PATH: join(root, 'tsconfig.json'),
  },
})
process.on('SIGINT', () => {})
process.on('SIGTERM', () => child.kill('SIGTERM'))
child.on('exit', (code, signal) => process.exit(code ?? 128 + (constants.signals[signal] ?? 0)))
