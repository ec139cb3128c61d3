/**
 * One line of the CA's audit log: every issuance and every refusal, with
 * who asked, how they were authenticated, what they asked for and why they
 * were refused. The reason of a refusal is written here and never sent to
 * the caller.
 */
export interface AuditEntry {
  /** ISO 8601. */
  readonly time: string
  readonly event: 'issued' | 'refused'
  /** `CreateCertificate`, `MintJWTSVID` or `WatchBundles`. */
  readonly method: string
  /** Where the call came from (`address:port`, or `unix`). */
  readonly peer: string
  /** The authenticated caller, when authentication succeeded. */
  readonly caller?: {
    readonly identity: string
    readonly method: string
    readonly node?: string
    readonly [detail: string]: string | undefined
  }
  /** The identity asked for (the caller's own, or the impersonated one). */
  readonly requested?: string
  /** Whether the caller asked for another identity than its own. */
  readonly impersonation?: boolean
  /** The gRPC status name of a refusal (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT`...). */
  readonly status?: string
  /** Why it was refused. */
  readonly reason?: string
  /** Of an issued X.509-SVID: its serial number (hex), lifetime granted and end of validity. */
  readonly serial?: string
  readonly ttlSeconds?: number
  readonly notAfter?: string
  /** The lifetime asked for, when the CA clamped it. */
  readonly requestedTtlSeconds?: number
  /** Of an issued JWT-SVID: its audiences. */
  readonly audience?: readonly string[]
}

/** An audit sink writing one JSON line per entry, e.g. `auditToJsonLines((line) => stream.write(line))`. */
export function auditToJsonLines(write: (line: string) => void): (entry: AuditEntry) => void {
  return (entry) => write(`${JSON.stringify(entry)}\n`)
}
