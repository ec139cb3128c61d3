/** Options every asynchronous ambientkit call accepts. */
export interface AbortOptions {
  /** Cancels the operation; it then rejects with `ERR_AMBIENT_ABORTED`. */
  signal?: AbortSignal
}

/** A long-lived object. `close()` is idempotent: calling it again resolves at once. */
export interface Closable {
  close(): Promise<void>
}
