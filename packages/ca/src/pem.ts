import { pemCertificates } from '@ambientkit/identity'

/** Splits PEM text into one PEM block per certificate, each ending in a newline (Istio's `cert_chain` form). */
export function pemBlocks(text: string): string[] {
  return pemCertificates(text).map((block) => `${block}\n`)
}
