/** Splits PEM text into one PEM block per certificate, each ending in a newline (Istio's `cert_chain` form). */
export function pemBlocks(text: string): string[] {
  return (text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []).map((block) => `${block}\n`)
}
