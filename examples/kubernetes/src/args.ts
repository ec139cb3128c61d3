import { parseArgs } from 'node:util'
import { AmbientError, CoreErrorCode } from '@ambientkit/core'

/** What `main.ts` prints for `--help` and after a bad argument. */
export const USAGE = `usage: node dist/main.js [--config <file>]

  --config <file>  the mesh settings (mesh.yaml of the ambientkit-mesh ConfigMap);
                   default /etc/ambientkit/mesh.yaml
  --help           print this and exit

The environment gives NODE_NAME (required), ADMIN_ADDRESS, METRICS_ADDRESS and STATE_FILE: see docs/kubernetes.md.
`

/** The node agent's command line. */
export interface MainArgs {
  readonly config: string
  readonly help: boolean
}

/**
 * Reads the node agent's arguments with `node:util`'s `parseArgs`, strict:
 * an unknown option, a positional argument or `--config` without a value
 * is an error, never a silent default.
 *
 * @throws `ERR_AMBIENT_INVALID_ARGUMENT` with parseArgs' message.
 */
export function parseMainArgs(argv: readonly string[]): MainArgs {
  try {
    const { values } = parseArgs({
      args: [...argv],
      options: { config: { type: 'string', default: '/etc/ambientkit/mesh.yaml' }, help: { type: 'boolean', default: false } },
      strict: true,
      allowPositionals: false,
    })
    if (values.config === '') throw new TypeError("Option '--config <value>' needs a file name")
    return { config: values.config, help: values.help }
  } catch (err) {
    throw new AmbientError(CoreErrorCode.InvalidArgument, (err as Error).message, { cause: err, details: { name: 'argv', value: argv } })
  }
}
