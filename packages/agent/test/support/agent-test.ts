import { get } from 'node:http'
import type { PodEnrollment, PodSource, PodSourceEvent } from '@ambientkit/core'

/** A pod source whose list the test sets, emitting events like a real watcher. */
export function createListPodSource(initial: PodEnrollment[]): PodSource & { set(pods: PodEnrollment[]): void } {
  let pods = new Map(initial.map((p) => [p.workload.uid, p]))
  const listeners = new Set<(event: PodSourceEvent) => void>()
  return {
    list: async () => [...pods.values()],
    watch(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    set(next) {
      const nextMap = new Map(next.map((p) => [p.workload.uid, p]))
      for (const uid of pods.keys()) if (!nextMap.has(uid)) for (const l of listeners) l({ type: 'remove', uid })
      for (const pod of next) if (pods.get(pod.workload.uid) !== pod) for (const l of listeners) l({ type: 'upsert', pod })
      pods = nextMap
    },
    close: async () => {
      listeners.clear()
    },
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
