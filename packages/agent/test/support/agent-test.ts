import { get } from 'node:http'
import { createSubscribers, type PodEnrollment, type PodSource, type PodSourceEvent } from '@ambientkit/core'

/** A pod source whose list the test sets, emitting events like a real watcher. */
export function createListPodSource(initial: PodEnrollment[]): PodSource & { set(pods: PodEnrollment[]): void } {
  let pods = new Map(initial.map((p) => [p.workload.uid, p]))
  const subscribers = createSubscribers<PodSourceEvent>()
  return {
    list: async () => [...pods.values()],
    subscribe: subscribers.subscribe,
    set(next) {
      const nextMap = new Map(next.map((p) => [p.workload.uid, p]))
      for (const uid of pods.keys()) if (!nextMap.has(uid)) subscribers.emit({ type: 'remove', uid })
      for (const pod of next) if (pods.get(pod.workload.uid) !== pod) subscribers.emit({ type: 'upsert', pod })
      pods = nextMap
    },
    close: async () => subscribers.clear(),
    [Symbol.asyncDispose]: async () => subscribers.clear(),
  }
}

/** GET on the loopback admin server. */
export function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    get({ host: '127.0.0.1', port, path }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }))
    }).on('error', reject)
  })
}
