import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

const src = (name: string): string =>
  fileURLToPath(new URL(`./packages/${name}/src/index.ts`, import.meta.url))

export default defineConfig({
  resolve: {
    // Tests run against the sources of sibling packages: no build step between
    // an edit and a test run, and the public entry point is still the only door.
    alias: {
      '@ambientkit/core': src('core'),
      '@ambientkit/identity': src('identity'),
      '@ambientkit/redirect': src('redirect'),
      '@ambientkit/proxy': src('proxy'),
      '@ambientkit/ca': src('ca'),
      '@ambientkit/workload-api': src('workload-api'),
      '@ambientkit/agent': src('agent'),
      '@ambientkit/istio': src('istio'),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'examples/*/test/**/*.test.ts', 'bench/test/**/*.test.ts', 'chaos/test/**/*.test.ts', 'test/**/*.test.ts'],
    // Child processes, not worker threads: setns() and socket options act on the
    // calling thread, and a crash in the native addon must not take the runner down.
    pool: 'forks',
    // Any uncaught exception or unhandled rejection in a process a test started fails that test.
    setupFiles: ['test/support/child-crashes.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
})
