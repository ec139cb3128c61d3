import { AmbientError, CoreErrorCode } from './errors'

/**
 * What runs off Linux, for the message of {@link assertLinux}: the packages
 * that need no kernel feature of Linux.
 */
const PORTABLE =
  '@ambientkit/core, @ambientkit/identity and the HBONE client and server of @ambientkit/proxy (on its Node data path) run on any platform Node runs on'

/**
 * Throws `ERR_AMBIENT_UNSUPPORTED_PLATFORM` unless this is Linux: what a
 * package that needs network namespaces, netfilter or its Linux addon calls
 * when it is imported, so that elsewhere the first thing a user sees says
 * why and what works there instead, not a native loader's failure.
 *
 * @param packageName - the package being imported, named in the message
 * @param needs - what of Linux it needs, named in the message
 */
export function assertLinux(packageName: string, needs: string): void {
  const platform = process.platform
  if (platform === 'linux') return
  throw new AmbientError(
    CoreErrorCode.UnsupportedPlatform,
    `${packageName} needs Linux (${needs}) and cannot run on ${platform}; ${PORTABLE}`,
    { details: { package: packageName, platform } },
  )
}
