// docs/errors.md: matching an error by code, with details typed per code.
import { isAmbientError, parseSocketAddress } from '@ambientkit/core'

try {
  parseSocketAddress('10.0.0.1:http')
} catch (err) {
  if (isAmbientError(err, 'ERR_AMBIENT_INVALID_ADDRESS')) {
    // details is typed per code: here the refused field and its value.
    console.log(`${err.details.name} was ${JSON.stringify(err.details.value)}`)
  } else {
    throw err
  }
}
