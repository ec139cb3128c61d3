import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const root = fileURLToPath(new URL('../../..', import.meta.url))
const tsx = fileURLToPath(new URL('../../../node_modules/tsx/dist/cli.mjs', import.meta.url))

/**
 * Imports `entry` in a child process that believes it runs on `platform`:
 * what the import threw, or which native addons it loaded (`process.dlopen`).
 */
function importOn(platform: string, entry: string): Promise<Record<string, unknown>> {
  const preload = `data:text/javascript,
    Object.defineProperty(process, 'platform', { value: ${JSON.stringify(platform)} });
    const dlopen = process.dlopen;
    globalThis.dlopened = [];
    process.dlopen = (module, file, ...rest) => { globalThis.dlopened.push(file); return dlopen.call(process, module, file, ...rest) }`
  const program = `import(${JSON.stringify(entry)}).then(
    () => console.log(JSON.stringify({ imported: true, dlopened: globalThis.dlopened })),
    (err) => console.log(JSON.stringify({ name: err.name, code: err.code, message: err.message, details: err.details })))`
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [tsx, '--tsconfig', `${root}tsconfig.json`, '--import', preload, '--eval', program], { cwd: root }, (err, stdout, stderr) =>
      err === null ? resolve(JSON.parse(stdout) as Record<string, unknown>) : reject(new Error(`${err.message}\n${stderr}`)),
    )
  })
}

const redirect = fileURLToPath(new URL('../src/index.ts', import.meta.url))
const agent = fileURLToPath(new URL('../../agent/src/index.ts', import.meta.url))
const core = fileURLToPath(new URL('../../core/src/index.ts', import.meta.url))
const identity = fileURLToPath(new URL('../../identity/src/index.ts', import.meta.url))

describe('off Linux', () => {
  it.each([
    ['@ambientkit/redirect', redirect],
    ['@ambientkit/agent', agent],
  ])('importing %s fails at once, saying which platform this is and what works on it', async (_name, entry) => {
    const result = await importOn('darwin', entry)
    expect(result).toMatchObject({ name: 'AmbientError', code: 'ERR_AMBIENT_UNSUPPORTED_PLATFORM', details: { package: '@ambientkit/redirect', platform: 'darwin' } })
    expect(result.message).toMatch(/^@ambientkit\/redirect needs Linux .* cannot run on darwin; @ambientkit\/core, @ambientkit\/identity and the HBONE client and server of @ambientkit\/proxy/)
  })

  it.each([
    ['@ambientkit/core', core],
    ['@ambientkit/identity', identity],
  ])('%s imports', async (_name, entry) => {
    expect(await importOn('win32', entry)).toEqual({ imported: true, dlopened: [] })
  })
})

describe('on Linux', () => {
  // netlink's addon (and ours) load when a function needs them, not at
  // import: a program that only renders rules, or a bundle, never loads them.
  it('importing @ambientkit/redirect loads no native addon', async () => {
    expect(await importOn('linux', redirect)).toEqual({ imported: true, dlopened: [] })
  })
})
