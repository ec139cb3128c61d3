#!/usr/bin/env node
// Entry point of `npm run demo`: checks what the demo needs (root, ip,
// iptables, nft, tcpdump), then runs src/demo.ts with the package sources
// (tsx with the repository's tsconfig), so the demo never runs stale builds.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { constants } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const example = join(here, '..')
const root = join(example, '..', '..')
const args = process.argv.slice(2)

if (args.includes('--help') || args.includes('-h')) {
  console.log(`usage: sudo npm run demo -- [--keep | --down | --apply] [--json] [--config mesh.yaml]
  (no flag)  build the mesh, send traffic, print the report, tear everything down
  --keep     leave the mesh running afterwards and print a cheat sheet
  --down     remove everything a demo created
  --apply    send the policies of mesh.yaml to the running mesh
  --json     print the report as JSON on stdout (progress stays on stderr)`)
  process.exit(0)
}

const problems = []
if (process.getuid?.() !== 0) {
  problems.push('The demo creates network namespaces and firewall rules: it must run as root.\n  Run: sudo npm run demo')
}
const tools = { ip: 'iproute2', iptables: 'iptables', nft: 'nftables', tcpdump: 'tcpdump' }
const missing = Object.entries(tools).filter(([command]) => spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status !== 0)
if (missing.length > 0) {
  const packages = [...new Set(missing.map(([, pkg]) => pkg))].join(' ')
  problems.push(`Missing commands: ${missing.map(([c]) => c).join(', ')}.\n  Install them: sudo apt-get install -y ${packages}   (or run: sudo npm run setup)`)
}
const tsxLoader = join(root, 'node_modules', 'tsx')
if (!existsSync(tsxLoader)) problems.push('The npm packages are not installed.\n  Run: npm ci   (or: sudo npm run setup)')
if (problems.length > 0) {
  for (const problem of problems) console.error(problem)
  process.exit(1)
}

const child = spawn(process.execPath, ['--import', 'tsx', join(example, 'src', 'demo.ts'), ...args], {
  cwd: example,
  stdio: 'inherit',
  env: { ...process.env, TSX_TSCONFIG_PATH: join(root, 'tsconfig.json') },
})
// Ctrl-C reaches the demo directly (same process group) and it tears down;
// this wrapper only waits for it, and passes on a SIGTERM sent to it alone.
process.on('SIGINT', () => {})
process.on('SIGTERM', () => child.kill('SIGTERM'))
child.on('exit', (code, signal) => process.exit(code ?? 128 + (constants.signals[signal] ?? 0)))
