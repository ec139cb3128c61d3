// The local control plane as a process: node src/control-plane-main.ts --config mesh.yaml --state-dir /run/ambientkit-local
import { createJsonLogger } from '@ambientkit/core'
import { loadMeshConfig } from './config'
import { createControlPlane } from './control-plane'
import { DEFAULT_CONFIG, STATE_DIR, state } from './paths'
import { createLogSink, onShutdown, options, signalParent } from './process-util'

const args = options(['config', 'state-dir'])
const dir = args['state-dir'] ?? STATE_DIR
const logger = createJsonLogger({ write: createLogSink().write })
try {
  const config = loadMeshConfig(args.config ?? DEFAULT_CONFIG)
  const controlPlane = await createControlPlane({ config, stateDir: dir, logger })
  onShutdown(() => controlPlane.close())
  signalParent({ ready: true, socket: state.socket(dir), revision: controlPlane.state().revision })
} catch (err) {
  logger.fatal({ err }, 'control plane failed to start')
  signalParent({ ready: false, error: (err as Error).message })
  process.exit(1)
}
