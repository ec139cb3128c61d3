import { describe, expect, it } from 'vitest'
import { createSubscribers, type PodSource, type PodSourceEvent } from '@ambientkit/core'
import type { NodeProxy } from '@ambientkit/proxy'
import { createNodeAgent } from '@ambientkit/agent'

// The agent's lifecycle without pods, so without root: what it holds of its
// pod source, and how start, close and await using treat it.
function emptyPodSource(): PodSource & { subscribers: number } {
  const subscribers = createSubscribers<PodSourceEvent>()
  return {
    list: async () => [],
    subscribe: subscribers.subscribe,
    close: async () => subscribers.clear(),
    [Symbol.asyncDispose]: async () => subscribers.clear(),
    get subscribers() {
      return subscribers.size
    },
  }
}

// No pods are listed, so the agent never calls its node proxy.
const nodeProxy = {} as NodeProxy

describe('node agent lifecycle', () => {
  it('follows its pod source from start until await using closes it', async () => {
    const podSource = emptyPodSource()
    {
      await using agent = createNodeAgent({ nodeProxy, podSource })
      expect(await agent.start()).toEqual({ enrolled: [], removed: [], failed: [] })
      expect(podSource.subscribers).toBe(1)
    }
    expect(podSource.subscribers).toBe(0)
  })

  it('start with an aborted signal rejects and leaves no subscription behind', async () => {
    const podSource = emptyPodSource()
    const agent = createNodeAgent({ nodeProxy, podSource })
    await expect(agent.start({ signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_AMBIENT_ABORTED' })
    expect(podSource.subscribers).toBe(0)
    await agent.close()
  })

  it('is closed once: close is idempotent, and a closed agent refuses to start', async () => {
    const agent = createNodeAgent({ nodeProxy, podSource: emptyPodSource() })
    const first = agent.close()
    expect(agent.close()).toBe(first)
    await first
    await expect(agent.start()).rejects.toMatchObject({ code: 'ERR_AMBIENT_CLOSED' })
  })
})
