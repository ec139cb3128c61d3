/**
 * A node agent in ztunnel's place, configured by ztunnel's environment
 * (see `istioNodeConfig`): run by the DaemonSet in manifests/.
 *
 *   NODE_NAME=node-1 node dist/main.js
 */
import { createJsonLogger } from '@ambientkit/core'
import { istioNodeConfig } from './config'
import { startIstioNode } from './node'

const log = createJsonLogger({ bindings: { component: 'ambientkit-istio-node' } })
let config
try {
  config = istioNodeConfig(process.env)
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`)
  process.exit(2)
}
// SIGTERM before the start finished (istiod unreachable): stop waiting and exit.
const starting = new AbortController()
const stopEarly = (): void => starting.abort()
process.once('SIGTERM', stopEarly)
let node
try {
  node = await startIstioNode(config, log, { signal: starting.signal, onListening: (addresses) => log.info({ addresses }, 'listening') })
} catch (err) {
  log.error({ err }, 'start failed')
  process.exit(1)
}
process.off('SIGTERM', stopEarly)
log.info({ addresses: node.addresses }, 'node agent started')

// On SIGTERM (pod deletion, rolling update): stop following istio-cni, drain, leave the pods captured.
const shutdown = (): void => {
  log.info('draining')
  void node.close().then(
    () => process.exit(0),
    (err: unknown) => {
      log.error({ err }, 'shutdown failed')
      process.exit(1)
    },
  )
}
// A SIGTERM that came while the agent was starting is honoured now.
if (starting.signal.aborted) shutdown()
else process.once('SIGTERM', shutdown)
