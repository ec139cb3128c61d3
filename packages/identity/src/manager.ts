import {
  AmbientError,
  CoreErrorCode,
  abortError,
  createSubscribers,
  invalidArgument,
  silentLogger,
  throwIfAborted,
  type AbortOptions,
  type Logger,
  type LongLived,
  type Subscribable,
} from '@ambientkit/core'
import type { CertificateAuthority, X509Svid } from './ca'
import { TrustBundle, createTrustBundleSet, type TrustBundleSet } from './bundle'
import type { JwtSvid, JwtSvidIssuer } from './jwt'
import { IdentityErrorCode } from './errors'
import { SpiffeId } from './spiffe-id'
import { verifyX509Svid } from './verify'

/** Options a source receives for one fetch. */
export interface IdentityFetchOptions extends AbortOptions {
  /** The lifetime the manager asks for; a source may return a shorter one. */
  ttlSeconds: number
}

/** Options a source receives for one JWT-SVID. */
export interface JwtSvidFetchOptions extends AbortOptions {
  /** The `aud` claim: at least one audience. */
  audience: readonly string[]
}

/**
 * Where an {@link IdentityManager} gets SVIDs and trust bundles: a local CA
 * ({@link createLocalCaSource}), a CA service speaking Istio's certificate
 * API (`@ambientkit/ca`), or a SPIFFE Workload API such as a SPIRE agent's
 * (`@ambientkit/workload-api`).
 */
export interface IdentitySource {
  /**
   * The bundles of every trust domain the source vouches for, kept current
   * by the source: a new root added, both trusted during an overlap, the old
   * one removed. Everything built on a manager follows its changes.
   */
  readonly bundles: TrustBundleSet
  /** Produces a fresh X.509-SVID for `id`. */
  fetch(id: SpiffeId, options: IdentityFetchOptions): Promise<X509Svid>
  /**
   * Announces SVIDs the source renewed on its own (a Workload API stream):
   * the manager installs those of identities it holds as rotations. Returns
   * the function that stops the announcements. Optional.
   */
  subscribe?(listener: (svid: X509Svid) => void): () => void
  /** Produces a JWT-SVID for `id`. Optional: a source without it cannot serve JWT-SVIDs. */
  fetchJwtSvid?(id: SpiffeId, options: JwtSvidFetchOptions): Promise<JwtSvid>
  /** Releases what the source holds. Optional. */
  close?(): Promise<void>
}

/** Options of {@link createLocalCaSource}. */
export interface LocalCaSourceOptions {
  /** Extra bundles (federated trust domains) to trust besides the CAs' own. Default none. */
  federatedBundles?: TrustBundleSet
  /** Signers of JWT-SVIDs, one per trust domain; their keys join the bundles. Default none (no JWT-SVIDs). */
  jwtIssuers?: readonly JwtSvidIssuer[]
  /** DNS names to put beside an identity's SPIFFE ID (a server reached by name, such as a CA service). Default none. */
  dnsNames?: (id: SpiffeId) => readonly string[]
}

/**
 * An {@link IdentitySource} backed by in-process CAs, one per trust domain.
 * Its bundle set holds each CA's bundle plus any federated bundles.
 */
export function createLocalCaSource(cas: CertificateAuthority | readonly CertificateAuthority[], options: LocalCaSourceOptions = {}): IdentitySource {
  const list = Array.isArray(cas) ? cas : [cas as CertificateAuthority]
  if (list.length === 0) throw invalidArgument('cas', cas, 'at least one CertificateAuthority')
  const issuers = options.jwtIssuers ?? []
  const own = list.map((ca) => {
    const jwtAuthorities = issuers.filter((i) => i.trustDomain.equals(ca.trustDomain)).map((i) => i.authority)
    return jwtAuthorities.length === 0 ? ca.bundle : TrustBundle.create({ trustDomain: ca.trustDomain, x509Authorities: ca.bundle.x509Authorities, jwtAuthorities })
  })
  const bundles = createTrustBundleSet([...(options.federatedBundles?.all() ?? []), ...own])
  const domains = (): string => list.map((c) => c.trustDomain.name).join(', ')
  return {
    bundles,
    async fetch(id, fetchOptions) {
      const ca = list.find((c) => id.memberOf(c.trustDomain))
      if (ca === undefined) throw invalidArgument('id', id.toString(), `an ID in one of the trust domains ${domains()}`)
      return ca.issue(id, { ttlSeconds: fetchOptions.ttlSeconds, signal: fetchOptions.signal, dnsNames: options.dnsNames?.(id) ?? [] })
    },
    async fetchJwtSvid(id, fetchOptions) {
      throwIfAborted(fetchOptions.signal, 'fetchJwtSvid')
      const issuer = issuers.find((i) => id.memberOf(i.trustDomain))
      if (issuer === undefined) throw invalidArgument('id', id.toString(), `an ID of a trust domain with a JWT-SVID issuer (${issuers.map((i) => i.trustDomain.name).join(', ') || 'none configured'})`)
      return issuer.sign(id, { audience: fetchOptions.audience })
    },
  }
}

/** Emitted after an identity's SVID was replaced. */
export interface RotationEvent {
  type: 'rotated'
  id: SpiffeId
  svid: X509Svid
  /** The SVID it replaced. */
  previous: X509Svid
}

/** Emitted when fetching or renewing an SVID failed; the current SVID (if any) is kept and renewal retried. */
export interface IdentityFailureEvent {
  type: 'error'
  id: SpiffeId
  error: AmbientError
  /** Consecutive failures so far. */
  attempt: number
  /** When the next attempt happens, in ms from now; `undefined` for a first fetch (the caller saw the error). */
  retryInMs: number | undefined
}

/** Emitted when an identity unused for `idleTimeoutMs` was dropped instead of renewed. */
export interface IdentityDroppedEvent {
  type: 'dropped'
  id: SpiffeId
}

/** What an {@link IdentityManager}'s subscribers get. */
export type IdentityManagerEvent = RotationEvent | IdentityFailureEvent | IdentityDroppedEvent

/** Options of {@link createIdentityManager}. */
export interface IdentityManagerOptions {
  /** Where SVIDs come from. */
  source: IdentitySource
  /** Lifetime requested for each SVID. Default 86400 (24 h, Istio's default). */
  ttlSeconds?: number
  /** Fraction of an SVID's lifetime after which it is renewed. Default 0.5. */
  rotateAt?: number
  /** Renewal happens up to this fraction of the lifetime earlier, at random, so identities do not renew in lockstep. Default 0.05. */
  jitter?: number
  /** An identity neither fetched through `get()` nor retained for this long is dropped at its next renewal. Default 3 600 000 (1 h). */
  idleTimeoutMs?: number
  /** First retry delay after a failed renewal; it doubles up to `maxRetryDelayMs`. Default 1000. */
  retryDelayMs?: number
  /** Longest retry delay. Default 60 000. */
  maxRetryDelayMs?: number
  /** Default: silent. */
  logger?: Logger
}

/**
 * Holds the SVIDs of many identities (a node proxy holds one per service
 * account on its node) and keeps them fresh. Subscribers get an
 * {@link IdentityManagerEvent} on every rotation, failure and drop.
 */
export interface IdentityManager extends LongLived, Subscribable<IdentityManagerEvent> {
  /** The current SVID of `id`, fetched on first use; concurrent first calls share one fetch. */
  get(id: SpiffeId | string, options?: AbortOptions): Promise<X509Svid>
  /** The current SVID of `id` if it is held and unexpired, without fetching. */
  current(id: SpiffeId | string): X509Svid | undefined
  /**
   * Renews `id` now (fetching it if not held), as if its rotation time had
   * come: emits `rotated` and re-arms the next renewal. Rejects, keeping the
   * current SVID, when the source fails.
   */
  rotate(id: SpiffeId | string, options?: AbortOptions): Promise<X509Svid>
  /**
   * A JWT-SVID of `id` for `audience`, from the source; a token is reused
   * until half of its lifetime has passed. Rejects with
   * `ERR_AMBIENT_IDENTITY_UNAVAILABLE` when the source has no JWT-SVIDs or fails.
   */
  fetchJwtSvid(id: SpiffeId | string, audience: readonly string[], options?: AbortOptions): Promise<JwtSvid>
  /** Keeps `id` renewed even when `get()` is not called (a listener presenting it). Returns the release function. */
  retain(id: SpiffeId | string): () => void
  /** The IDs currently held. */
  ids(): SpiffeId[]
  /** The trust bundles (the source's set, kept current by it). */
  readonly bundles: TrustBundleSet
  /** Stops renewing, drops every SVID and closes the source. Idempotent. */
  close(): Promise<void>
}

// setTimeout's longest delay; longer waits are re-armed in steps.
const MAX_TIMER_MS = 2 ** 31 - 1
// JWT-SVIDs kept for reuse: bounded, as audiences come from callers.
const MAX_CACHED_JWT_SVIDS = 1024

interface Entry {
  id: SpiffeId
  svid: X509Svid | undefined
  /** When `svid` arrived: its lifetime is counted from here, not from its backdated notBefore. */
  receivedAt: number
  pending: Promise<X509Svid> | undefined
  timer: NodeJS.Timeout | undefined
  lastUsed: number
  retained: number
  failures: number
}

function checkFraction(name: string, value: number, min: number, max: number): number {
  if (typeof value !== 'number' || !(value >= min && value <= max)) throw invalidArgument(name, value, `a number in [${min}, ${max}]`)
  return value
}

function checkPositive(name: string, value: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) throw invalidArgument(name, value, 'a positive number')
  return value
}

/** Lets one caller stop waiting for a shared promise without cancelling it for the others. */
function withSignal<T>(shared: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  if (signal === undefined) return shared
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal, what))
    signal.addEventListener('abort', onAbort, { once: true })
    shared.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

const toId = (id: SpiffeId | string): SpiffeId => (typeof id === 'string' ? SpiffeId.parse(id) : id)

/** Creates an {@link IdentityManager}. */
export function createIdentityManager(options: IdentityManagerOptions): IdentityManager {
  const source = options.source
  if (source === null || typeof source !== 'object' || typeof source.fetch !== 'function') throw invalidArgument('source', source, 'an IdentitySource')
  const ttlSeconds = checkPositive('ttlSeconds', options.ttlSeconds ?? 86_400)
  const rotateAt = checkFraction('rotateAt', options.rotateAt ?? 0.5, 0.01, 0.99)
  const jitter = checkFraction('jitter', options.jitter ?? 0.05, 0, rotateAt - 0.001)
  const idleTimeoutMs = checkPositive('idleTimeoutMs', options.idleTimeoutMs ?? 3_600_000)
  const retryDelayMs = checkPositive('retryDelayMs', options.retryDelayMs ?? 1000)
  const maxRetryDelayMs = checkPositive('maxRetryDelayMs', options.maxRetryDelayMs ?? 60_000)
  const logger = options.logger ?? silentLogger
  const entries = new Map<string, Entry>()
  const subscribers = createSubscribers<IdentityManagerEvent>({ logger, what: 'identity manager' })
  const lifetime = new AbortController()
  let closed: Promise<void> | undefined
  const jwtSvids = new Map<string, JwtSvid>()

  const arm = (entry: Entry, at: number, action: () => void): void => {
    clearTimeout(entry.timer)
    const delay = Math.max(0, at - Date.now())
    entry.timer = setTimeout(() => (delay > MAX_TIMER_MS ? arm(entry, at, action) : action()), Math.min(delay, MAX_TIMER_MS))
    // A manager must not keep a process alive on its own; close() clears the timers anyway.
    entry.timer.unref()
  }

  const scheduleRenewal = (entry: Entry): void => {
    const svid = entry.svid!
    // Counted from arrival, so a backdated notBefore (or an SVID that has aged at its
    // source) cannot put the renewal in the past and renew in a loop.
    const start = Math.max(svid.notBefore.getTime(), entry.receivedAt)
    const fraction = rotateAt - jitter * Math.random()
    arm(entry, start + (svid.notAfter.getTime() - start) * fraction, () => renew(entry))
  }

  const fetchSvid = (entry: Entry): Promise<X509Svid> => {
    entry.pending ??= source.fetch(entry.id, { ttlSeconds, signal: lifetime.signal }).then(
      (svid) => {
        entry.pending = undefined
        if (!svid.id.equals(entry.id)) {
          throw new AmbientError(IdentityErrorCode.IdentityUnavailable, `the identity source returned an SVID for ${svid.id.toString()} instead of ${entry.id.toString()}`)
        }
        return svid
      },
      (cause: unknown) => {
        entry.pending = undefined
        if (cause instanceof AmbientError && cause.code === CoreErrorCode.Aborted) throw cause
        throw new AmbientError(IdentityErrorCode.IdentityUnavailable, `could not get an SVID for ${entry.id.toString()}: ${(cause as Error)?.message ?? String(cause)}`, {
          cause, details: { id: entry.id.toString() },
        })
      },
    )
    return entry.pending
  }

  const install = (entry: Entry, svid: X509Svid): void => {
    if (entry.svid === svid) return
    const previous = entry.svid
    entry.svid = svid
    entry.receivedAt = Date.now()
    entry.failures = 0
    if (entries.get(entry.id.toString()) === entry) scheduleRenewal(entry)
    if (previous !== undefined) {
      logger.info({ id: entry.id.toString(), notAfter: svid.notAfter.toISOString() }, 'rotated SVID')
      subscribers.emit({ type: 'rotated', id: entry.id, svid, previous })
    }
  }

  const drop = (entry: Entry): void => {
    clearTimeout(entry.timer)
    entries.delete(entry.id.toString())
    subscribers.emit({ type: 'dropped', id: entry.id })
  }

  const renew = (entry: Entry): void => {
    if (entry.retained === 0 && Date.now() - entry.lastUsed > idleTimeoutMs) {
      drop(entry)
      return
    }
    fetchSvid(entry).then((svid) => {
      // A source that hands back the SVID held has not renewed it (a stream not rotated yet): retried like a failure.
      if (entry.svid !== undefined && svid.certificateChainPem === entry.svid.certificateChainPem) {
        throw new AmbientError(IdentityErrorCode.IdentityUnavailable, `the identity source has not renewed ${entry.id.toString()} yet`)
      }
      return svid
    }).then(
      (svid) => install(entry, svid),
      (error: AmbientError) => {
        if (lifetime.signal.aborted || entries.get(entry.id.toString()) !== entry) return
        entry.failures++
        const retryInMs = Math.min(maxRetryDelayMs, retryDelayMs * 2 ** (entry.failures - 1))
        logger.warn({ id: entry.id.toString(), err: error, attempt: entry.failures, retryInMs }, 'SVID renewal failed; keeping the current SVID')
        subscribers.emit({ type: 'error', id: entry.id, error, attempt: entry.failures, retryInMs })
        arm(entry, Date.now() + retryInMs, () => renew(entry))
      },
    )
  }

  const entryFor = (id: SpiffeId): Entry => {
    const key = id.toString()
    let entry = entries.get(key)
    if (entry === undefined) {
      entry = { id, svid: undefined, receivedAt: 0, pending: undefined, timer: undefined, lastUsed: Date.now(), retained: 0, failures: 0 }
      entries.set(key, entry)
    }
    return entry
  }

  const usable = (svid: X509Svid | undefined): svid is X509Svid => svid !== undefined && svid.notAfter.getTime() > Date.now()

  // A bundle change can leave a held SVID chaining to a root no longer trusted
  // (an operator removed it early): such SVIDs are renewed at once, not at half-life.
  const offBundles = source.bundles.subscribe(() => {
    for (const entry of entries.values()) {
      if (entry.svid === undefined || entry.pending !== undefined) continue
      try {
        verifyX509Svid(entry.svid.certificateChainPem, source.bundles)
      } catch (err) {
        logger.info({ id: entry.id.toString(), reason: (err as AmbientError).details?.reason }, 'the trust bundle no longer vouches for the current SVID; renewing now')
        renew(entry)
      }
    }
  })

  const offSource = source.subscribe?.((svid) => {
    const entry = entries.get(svid.id.toString())
    // Only another SVID of an identity held, living at least as long, replaces the current one.
    if (entry?.svid !== undefined && svid.certificateChainPem !== entry.svid.certificateChainPem && svid.notAfter.getTime() >= entry.svid.notAfter.getTime()) install(entry, svid)
  })

  const checkOpen = (what: string): void => {
    if (closed !== undefined) throw new AmbientError(CoreErrorCode.Closed, `${what}: the identity manager is closed`)
  }

  return {
    bundles: source.bundles,

    async get(idInput, getOptions = {}) {
      checkOpen('get')
      throwIfAborted(getOptions.signal, 'get')
      const entry = entryFor(toId(idInput))
      entry.lastUsed = Date.now()
      if (usable(entry.svid)) return entry.svid
      const shared = fetchSvid(entry).then((svid) => {
        install(entry, svid)
        return svid
      }, (error: AmbientError) => {
        if (entry.svid === undefined && entry.retained === 0 && entries.get(entry.id.toString()) === entry) entries.delete(entry.id.toString())
        subscribers.emit({ type: 'error', id: entry.id, error, attempt: entry.failures + 1, retryInMs: undefined })
        throw error
      })
      return withSignal(shared, getOptions.signal, 'get')
    },

    async rotate(idInput, rotateOptions = {}) {
      checkOpen('rotate')
      throwIfAborted(rotateOptions.signal, 'rotate')
      const entry = entryFor(toId(idInput))
      entry.lastUsed = Date.now()
      const svid = await withSignal(fetchSvid(entry), rotateOptions.signal, 'rotate')
      install(entry, svid)
      return svid
    },

    current(idInput) {
      const svid = entries.get(toId(idInput).toString())?.svid
      return usable(svid) ? svid : undefined
    },

    retain(idInput) {
      checkOpen('retain')
      const entry = entryFor(toId(idInput))
      entry.retained++
      let released = false
      return () => {
        if (released) return
        released = true
        entry.retained--
        entry.lastUsed = Date.now()
      }
    },

    ids: () => [...entries.values()].filter((e) => e.svid !== undefined).map((e) => e.id),

    subscribe: subscribers.subscribe,

    async fetchJwtSvid(idInput, audience, fetchOptions = {}) {
      checkOpen('fetchJwtSvid')
      throwIfAborted(fetchOptions.signal, 'fetchJwtSvid')
      const id = toId(idInput)
      if (!Array.isArray(audience) || audience.length === 0 || audience.some((a) => typeof a !== 'string' || a === '')) {
        throw invalidArgument('audience', audience, 'at least one non-empty audience')
      }
      const key = JSON.stringify([id.toString(), [...audience].sort()])
      const cached = jwtSvids.get(key)
      if (cached !== undefined && Date.now() < (cached.issuedAt.getTime() + cached.expiresAt.getTime()) / 2) return cached
      if (source.fetchJwtSvid === undefined) throw new AmbientError(IdentityErrorCode.IdentityUnavailable, 'the identity source does not issue JWT-SVIDs')
      let svid: JwtSvid
      try {
        svid = await source.fetchJwtSvid(id, { audience, signal: fetchOptions.signal ?? lifetime.signal })
      } catch (cause) {
        if (cause instanceof AmbientError && cause.code === CoreErrorCode.Aborted) throw cause
        throw new AmbientError(IdentityErrorCode.IdentityUnavailable, `could not get a JWT-SVID for ${id.toString()}: ${(cause as Error)?.message ?? String(cause)}`, {
          cause, details: { id: id.toString() },
        })
      }
      jwtSvids.delete(key)
      jwtSvids.set(key, svid)
      if (jwtSvids.size > MAX_CACHED_JWT_SVIDS) jwtSvids.delete(jwtSvids.keys().next().value!)
      return svid
    },

    close() {
      closed ??= (async () => {
        lifetime.abort(new AmbientError(CoreErrorCode.Closed, 'the identity manager was closed'))
        offBundles()
        offSource?.()
        for (const entry of entries.values()) clearTimeout(entry.timer)
        entries.clear()
        subscribers.clear()
        jwtSvids.clear()
        await source.close?.()
      })()
      return closed
    },

    [Symbol.asyncDispose]() {
      return this.close()
    },
  }
}
