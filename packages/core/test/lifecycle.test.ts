import { describe, expect, it } from 'vitest'
import { createJsonLogger, createPolicyStore, createSubscribers, createWorkloadRegistry, isAmbientError, type Workload } from '@ambientkit/core'

type Tick = { type: 'tick'; n: number }

describe('createSubscribers', () => {
  it('calls every listener in order and stops one when it unsubscribes, once', () => {
    const subscribers = createSubscribers<Tick>()
    const seen: string[] = []
    const listener = (event: Tick): void => void seen.push(`a${event.n}`)
    const stopFirst = subscribers.subscribe(listener)
    subscribers.subscribe(listener)
    subscribers.subscribe((event) => seen.push(`b${event.n}`))
    subscribers.emit({ type: 'tick', n: 1 })
    stopFirst()
    stopFirst()
    subscribers.emit({ type: 'tick', n: 2 })
    expect(seen).toEqual(['a1', 'a1', 'b1', 'a2', 'b2'])
    expect(subscribers.size).toBe(2)
  })

  it('unsubscribes when the signal aborts, and subscribes nothing with an aborted one', () => {
    const subscribers = createSubscribers<Tick>()
    const controller = new AbortController()
    const seen: number[] = []
    subscribers.subscribe((event) => seen.push(event.n), { signal: controller.signal })
    subscribers.emit({ type: 'tick', n: 1 })
    controller.abort()
    subscribers.emit({ type: 'tick', n: 2 })
    subscribers.subscribe((event) => seen.push(event.n), { signal: controller.signal })
    subscribers.emit({ type: 'tick', n: 3 })
    expect(seen).toEqual([1])
    expect(subscribers.size).toBe(0)
  })

  it('lets every listener have the event when one throws, then says so', () => {
    const subscribers = createSubscribers<Tick>({ what: 'clock' })
    const seen: number[] = []
    subscribers.subscribe(() => {
      throw new Error('listener bug')
    })
    subscribers.subscribe((event) => seen.push(event.n))
    let thrown: unknown
    try {
      subscribers.emit({ type: 'tick', n: 1 })
    } catch (err) {
      thrown = err
    }
    expect(seen).toEqual([1])
    expect(isAmbientError(thrown, 'ERR_AMBIENT_LISTENER_FAILED')).toBe(true)
    expect((thrown as Error).message).toBe('a listener of the clock threw: listener bug')
    expect((thrown as Error).cause).toEqual(new Error('listener bug'))
  })

  it('logs a listener error instead when it has a logger', () => {
    const lines: string[] = []
    const subscribers = createSubscribers<Tick>({ what: 'clock', logger: createJsonLogger({ write: (line) => lines.push(line) }) })
    subscribers.subscribe(() => {
      throw new Error('listener bug')
    })
    expect(() => subscribers.emit({ type: 'tick', n: 1 })).not.toThrow()
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'error', msg: 'a listener of the clock threw', event: 'tick', err: { message: 'listener bug' } })
  })

  it('clear() unsubscribes everyone, and lets go of their signals', () => {
    const subscribers = createSubscribers<Tick>()
    const controller = new AbortController()
    let removed = 0
    const signal = controller.signal
    const remove = signal.removeEventListener.bind(signal)
    signal.removeEventListener = (...args: Parameters<AbortSignal['removeEventListener']>) => {
      removed++
      remove(...args)
    }
    subscribers.subscribe(() => {}, { signal })
    subscribers.clear()
    expect(subscribers.size).toBe(0)
    expect(removed).toBe(1)
  })
})

describe('the subscriptions of core', () => {
  const workload: Workload = {
    uid: 'pod-1', name: 'api', namespace: 'shop', serviceAccount: 'api', node: 'node-1', addresses: ['10.1.0.5'], protocol: 'HBONE', labels: {},
  }

  it('registry: a change object a change, until the signal aborts', () => {
    const registry = createWorkloadRegistry()
    const controller = new AbortController()
    const types: string[] = []
    registry.subscribe((change) => types.push(change.type), { signal: controller.signal })
    registry.upsertWorkload(workload)
    controller.abort()
    registry.removeWorkload('pod-1')
    expect(types).toEqual(['workload-added'])
  })

  it('policy store: the policies in force, as a policies-changed event', () => {
    const store = createPolicyStore()
    const events: unknown[] = []
    store.subscribe((event) => events.push(event))
    const policy = store.upsert({ name: 'deny-all', namespace: 'shop', scope: 'namespace', action: 'DENY', rules: [[[{}]]] })
    expect(events).toEqual([{ type: 'policies-changed', policies: [policy] }])
  })
})
