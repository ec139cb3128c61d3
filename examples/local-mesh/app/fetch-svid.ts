// The demo's Workload API app: run inside a pod's network namespace, it asks
// the Workload API at SPIFFE_ENDPOINT_SOCKET for its X.509-SVID, as any SPIFFE
// app would, and prints what it got as one JSON line (or why it got nothing).
import { X509Certificate } from 'node:crypto'
import { createJsonLogger } from '@ambientkit/core'
import { createWorkloadApiSource } from '@ambientkit/workload-api'

// The source retries a refusal quietly; its log says what the server answered.
let refusal: string | undefined
const logger = createJsonLogger({
  level: 'debug',
  write: (line) => {
    const entry = JSON.parse(line) as { err?: { message?: string } }
    if (entry.err?.message !== undefined) refusal = entry.err.message
  },
})
const source = createWorkloadApiSource({ fetchTimeoutMs: 5000, logger })
const got = await new Promise<Record<string, string>>((resolve) => {
  const timer = setTimeout(() => resolve({ error: refusal ?? 'no SVID within 5 s' }), 5000)
  // The first message of the stream carries the SVIDs this process is entitled to.
  const off = source.subscribe((svid) => {
    clearTimeout(timer)
    off()
    // How many roots the node agent's bundle holds for the SVID's trust domain (two during a CA rotation).
    const roots = String(source.bundles.get(svid.id.trustDomain)?.x509Authorities.length ?? 0)
    resolve({ id: svid.id.toString(), serial: new X509Certificate(svid.certificateChainPem).serialNumber, notAfter: svid.notAfter.toISOString(), roots })
  })
})
await source.close()
console.log(JSON.stringify(got))
