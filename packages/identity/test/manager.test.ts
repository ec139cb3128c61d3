import { describe, expect, it } from 'vitest'
import { CoreErrorCode, isAmbientError } from '@ambientkit/core'
import {
  IdentityErrorCode, SpiffeId, createCertificateAuthority, createIdentityManager, createLocalCaSource,
  type IdentityManager, type IdentityManagerEvent, type IdentitySource, type X509Svid,
} from '@ambientkit/identity'

const id = SpiffeId.fromServiceAccount('example.org', 'shop', 'api')

/** A local CA source that counts fetches and can be told to fail. */
async function countingSource(): Promise<IdentitySource & { fetches: number; failNext: number }> {
  const inner = createLocalCaSource(await createCertificateAuthority({ trustDomain: 'example.org' }))
  const source = {
    fetches: 0,
    failNext: 0,
    bundles: inner.bundles,
    async fetch(...args: Parameters<IdentitySource['fetch']>): Promise<X509Svid> {
      source.fetches++
      if (source.failNext > 0) {
        source.failNext--
        throw new Error('CA unreachable')
      }
      return inner.fetch(...args)
    },
  }
  return source
}

function next<T extends IdentityManagerEvent['type']>(manager: IdentityManager, type: T): Promise<Extract<IdentityManagerEvent, { type: T }>> {
  return new Promise((resolve) => {
    const off = manager.subscribe((event) => {
      if (event.type !== type) return
      off()
      resolve(event as Extract<IdentityManagerEvent, { type: T }>)
    })
  })
}

describe('createIdentityManager', () => {
  it('fetches on first use and coalesces concurrent requests', async () => {
    const source = await countingSource()
    const manager = createIdentityManager({ source, ttlSeconds: 600 })
    try {
      const [a, b, c] = await Promise.all([manager.get(id), manager.get(id), manager.get(id.toString())])
      expect(source.fetches).toBe(1)
      expect(a).toBe(b)
      expect(b).toBe(c)
      expect(await manager.get(id)).toBe(a)
      expect(source.fetches).toBe(1)
      expect(manager.current(id)).toBe(a)
      expect(manager.ids().map(String)).toEqual([id.toString()])
    } finally {
      await manager.close()
    }
  })

  it('rotates at half the lifetime', async () => {
    const source = await countingSource()
    const manager = createIdentityManager({ source, ttlSeconds: 2, jitter: 0 })
    try {
      const requested = Date.now()
      const first = await manager.get(id)
      const event = await next(manager, 'rotated')
      expect(event.previous).toBe(first)
      expect(event.svid).not.toBe(first)
      expect(manager.current(id)).toBe(event.svid)
      // Half of the lifetime counted from arrival, not from the backdated notBefore
      // (which would put the renewal in the past and renew in a loop).
      const half = requested + (first.notAfter.getTime() - requested) / 2
      expect(Date.now()).toBeGreaterThanOrEqual(Math.floor(half) - 5)
      expect(Date.now()).toBeLessThan(first.notAfter.getTime())
    } finally {
      await manager.close()
    }
  })

  it('keeps the current SVID when a forced renewal fails', async () => {
    const source = await countingSource()
    const manager = createIdentityManager({ source, ttlSeconds: 600 })
    try {
      const first = await manager.get(id)
      source.failNext = 1
      await expect(manager.rotate(id)).rejects.toMatchObject({ code: IdentityErrorCode.IdentityUnavailable })
      expect(manager.current(id)).toBe(first)
      expect(await manager.get(id)).toBe(first)
      const rotated = next(manager, 'rotated')
      const svid = await manager.rotate(id)
      expect((await rotated).svid).toBe(svid)
      expect(manager.current(id)).toBe(svid)
    } finally {
      await manager.close()
    }
  })

  it('retries a failed scheduled renewal with doubling delays until it succeeds', async () => {
    const source = await countingSource()
    const manager = createIdentityManager({ source, ttlSeconds: 2, jitter: 0, retryDelayMs: 20 })
    try {
      const first = await manager.get(id)
      source.failNext = 2
      const errors: number[] = []
      manager.subscribe((e) => {
        if (e.type !== 'error') return
        expect(isAmbientError(e.error, IdentityErrorCode.IdentityUnavailable)).toBe(true)
        expect(manager.current(id)).toBe(first)
        errors.push(e.retryInMs!)
      })
      const event = await next(manager, 'rotated')
      expect(errors).toEqual([20, 40])
      expect(event.previous).toBe(first)
    } finally {
      await manager.close()
    }
  })

  it('drops identities nobody used or retained', async () => {
    const source = await countingSource()
    const manager = createIdentityManager({ source, ttlSeconds: 2, jitter: 0, idleTimeoutMs: 1 })
    try {
      await manager.get(id)
      const kept = SpiffeId.fromServiceAccount('example.org', 'shop', 'kept')
      await manager.get(kept)
      const release = manager.retain(kept)
      const dropped = await next(manager, 'dropped')
      expect(dropped.id.equals(id)).toBe(true)
      expect(manager.current(id)).toBeUndefined()
      const rotated = await next(manager, 'rotated')
      expect(rotated.id.equals(kept)).toBe(true)
      release()
    } finally {
      await manager.close()
    }
  })

  it('lets one caller abort without cancelling the shared fetch', async () => {
    const source = await countingSource()
    const manager = createIdentityManager({ source, ttlSeconds: 600 })
    try {
      const controller = new AbortController()
      const aborted = manager.get(id, { signal: controller.signal })
      const other = manager.get(id)
      controller.abort()
      await expect(aborted).rejects.toMatchObject({ code: CoreErrorCode.Aborted })
      expect((await other).id.equals(id)).toBe(true)
      expect(source.fetches).toBe(1)
    } finally {
      await manager.close()
    }
  })

  it('reports a failed first fetch to the caller', async () => {
    const source = await countingSource()
    source.failNext = 1
    const manager = createIdentityManager({ source, ttlSeconds: 600 })
    try {
      await expect(manager.get(id)).rejects.toMatchObject({ code: IdentityErrorCode.IdentityUnavailable, message: expect.stringMatching(/CA unreachable/) })
      expect((await manager.get(id)).id.equals(id)).toBe(true)
    } finally {
      await manager.close()
    }
  })

  it('closes idempotently and refuses use afterwards', async () => {
    const manager = createIdentityManager({ source: await countingSource(), ttlSeconds: 600 })
    await manager.get(id)
    await Promise.all([manager.close(), manager.close()])
    await expect(manager.get(id)).rejects.toMatchObject({ code: CoreErrorCode.Closed })
    expect(manager.current(id)).toBeUndefined()
  })

  it('validates its options', async () => {
    const source = await countingSource()
    expect(() => createIdentityManager({ source, rotateAt: 1.5 })).toThrow(/rotateAt/)
    expect(() => createIdentityManager({ source, ttlSeconds: 0 })).toThrow(/ttlSeconds/)
    expect(() => createIdentityManager({ source: {} as IdentitySource })).toThrow(/source/)
  })

  it('is closed by await using, with its subscriptions and its source', async () => {
    const source = await countingSource()
    let sourceClosed = 0
    const events: string[] = []
    let held: IdentityManager | undefined
    {
      await using manager = createIdentityManager({ source: { ...source, fetch: source.fetch, close: async () => void sourceClosed++ } })
      held = manager
      manager.subscribe((event) => events.push(event.type))
      await manager.rotate(id)
      await manager.rotate(id)
    }
    expect(events).toEqual(['rotated'])
    expect(sourceClosed).toBe(1)
    await held.close()
    expect(sourceClosed).toBe(1)
    await expect(held.get(id)).rejects.toMatchObject({ code: CoreErrorCode.Closed })
  })

  it('stops telling a subscriber once its signal aborts', async () => {
    const source = await countingSource()
    await using manager = createIdentityManager({ source })
    const controller = new AbortController()
    const events: IdentityManagerEvent[] = []
    manager.subscribe((event) => events.push(event), { signal: controller.signal })
    await manager.get(id)
    await manager.rotate(id)
    controller.abort()
    await manager.rotate(id)
    expect(events.map((e) => e.type)).toEqual(['rotated'])
  })
})

describe('trust bundle changes', () => {
  it('renews at once an SVID whose root left the bundle (a CA rotation ending early)', async () => {
    const { TrustBundle, createTrustBundleSet } = await import('@ambientkit/identity')
    const oldCa = await createCertificateAuthority({ trustDomain: 'example.org' })
    const newCa = await createCertificateAuthority({ trustDomain: 'example.org' })
    const bundles = createTrustBundleSet([TrustBundle.create({ trustDomain: 'example.org', x509Authorities: [oldCa.certificate, newCa.certificate] })])
    let signer = oldCa
    const manager = createIdentityManager({ source: { bundles, fetch: (i, o) => signer.issue(i, { ttlSeconds: o.ttlSeconds }) }, ttlSeconds: 3600 })
    const first = await manager.get(id)
    signer = newCa
    // Both roots trusted: nothing to do before half-life.
    bundles.set(TrustBundle.create({ trustDomain: 'example.org', x509Authorities: [oldCa.certificate, newCa.certificate], sequenceNumber: 2 }))
    expect(manager.current(id)).toBe(first)
    const rotated = next(manager, 'rotated')
    bundles.set(TrustBundle.create({ trustDomain: 'example.org', x509Authorities: [newCa.certificate], sequenceNumber: 3 }))
    const event = await rotated
    expect(event.previous).toBe(first)
    expect(new (await import('node:crypto')).X509Certificate(event.svid.certificateChainPem).checkIssued(newCa.certificate)).toBe(true)
    await manager.close()
  })
})
