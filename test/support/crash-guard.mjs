// Preloaded (NODE_OPTIONS=--import) into every Node process a test starts, by
// test/support/child-crashes.ts: records each uncaught exception and unhandled
// rejection in the directory AMBIENTKIT_CRASH_DIR names, one file per process,
// where the test that started the process finds it and fails. The monitor
// changes nothing else: the process still dies (or its own handler runs) as it
// would have. Plain JavaScript with no imports from the checkout, so that it
// loads in any process (one running as nobody included) and before tsx.
import { appendFileSync } from 'node:fs'
import { join } from 'node:path'

const dir = process.env.AMBIENTKIT_CRASH_DIR
if (dir !== undefined && dir !== '') {
  process.on('uncaughtExceptionMonitor', (err, origin) => {
    const error = err instanceof Error ? (err.stack ?? err.message) : String(err)
    try {
      appendFileSync(join(dir, `${process.pid}.crash`), `${JSON.stringify({ pid: process.pid, argv: process.argv, origin, error })}\n`)
    } catch {
      // Nowhere to record it: the process's own stderr still shows the crash.
    }
  })
}
