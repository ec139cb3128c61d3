// `npm run bench`: runs bench/suite.ts through tsx with the root tsconfig, so
// `@ambientkit/*` resolves to the packages' sources (no build step, and never a
// stale dist/). Arguments are passed on: --quick, --json, --docs, --skip-extras.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const child = spawn(process.execPath, ['--import', 'tsx', 'bench/suite.ts', ...process.argv.slice(2)], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, TSX_TSCONFIG_PATH: fileURLToPath(new URL('../tsconfig.json', import.meta.url)) },
})
// Ctrl-C reaches the suite too (same process group); it cleans up and exits. A SIGTERM sent to
// this process alone is passed on, so the suite still deletes its namespaces.
process.on('SIGINT', () => {})
process.on('SIGTERM', () => child.kill('SIGTERM'))
child.on('exit', (code, signal) => process.exit(code ?? (signal === null ? 1 : 128)))
