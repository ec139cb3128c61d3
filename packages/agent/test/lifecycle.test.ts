import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { createSubscribers, type PodSource, type PodSourceEvent, type Workload } from '@ambientkit/core'
import type { NodeProxy, NodeProxyComponent } from '@ambientkit/proxy'
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

/** A node proxy that only keeps the components registered with it, and refuses every workload. */
function fakeNodeProxy(): NodeProxy & { components: Map<string, NodeProxyComponent> } {
  const components = new Map<string, NodeProxyComponent>()
  return {
    components,
    register(component: NodeProxyComponent) {
      components.set(component.name, component)
      return () => components.delete(component.name)
    },
    addWorkload: async () => {
      throw new Error('no listeners for you')
    },
    removeWorkload: async () => false,
    metrics: {},
  } as unknown as NodeProxy & { components: Map<string, NodeProxyComponent> }
}

// No pods are listed, so the agent never calls its node proxy but to register.
const nodeProxy = fakeNodeProxy()

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

  it('keeps the node not ready until its first reconcile, and leaves its readiness with close', async () => {
    const proxy = fakeNodeProxy()
    const agent = createNodeAgent({ nodeProxy: proxy, podSource: emptyPodSource() })
    expect(proxy.components.get('node-agent')?.notReady?.()).toBe('first reconcile not finished')
    await agent.start()
    expect(proxy.components.get('node-agent')?.notReady?.()).toBeUndefined()
    expect(proxy.components.get('node-agent')?.configDump?.()).toEqual({ reconciled: true, enrolled: 0, failed: {}, stateWriteFailures: 0 })
    await agent.close()
    expect(proxy.components.has('node-agent')).toBe(false)
  })

  it('reports a pod that failed to enroll as not ready, until it is gone from the source (issue 15)', async () => {
    const proxy = fakeNodeProxy()
    const workload = { uid: 'pod-1', name: 'app', namespace: 'shop', serviceAccount: 'default', addresses: ['10.0.0.9'] } as unknown as Workload
    // Capture installed by someone else, so enrolling needs no root: only the (failing) node proxy.
    let pods = [{ workload, netnsPath: '/proc/self/ns/net', capture: 'external' as const }]
    const subscribers = createSubscribers<PodSourceEvent>()
    const podSource: PodSource = { list: async () => pods, subscribe: subscribers.subscribe, close: async () => {}, [Symbol.asyncDispose]: async () => {} }
    await using agent = createNodeAgent({ nodeProxy: proxy, podSource })
    const report = await agent.start()
    expect(report.failed).toEqual([{ uid: 'pod-1', error: 'no listeners for you' }])
    expect(proxy.components.get('node-agent')?.notReady?.()).toBe('pod pod-1 not enrolled: no listeners for you')
    expect(agent.state().failed).toEqual({ 'pod-1': 'no listeners for you' })
    pods = []
    await agent.reconcile()
    expect(proxy.components.get('node-agent')?.notReady?.()).toBeUndefined()
  })

  it('starts when its state file cannot be written, and counts the failures (issue 15)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ak-agent-state-'))
    try {
      // A directory that does not exist stands for any refused write here; the privileged test fills a real disk.
      await using agent = createNodeAgent({ nodeProxy: fakeNodeProxy(), podSource: emptyPodSource(), stateFile: join(dir, 'gone', 'agent.json') })
      expect(await agent.start()).toEqual({ enrolled: [], removed: [], failed: [] })
      await agent.reconcile()
      expect(agent.state()).toMatchObject({ reconciled: true, stateWriteFailures: 2 })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
