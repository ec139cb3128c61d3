import { readFileSync } from 'node:fs'
import type { KubernetesObject, V1EndpointSlice, V1Namespace, V1Pod, V1Service } from '@kubernetes/client-node'

const dir = new URL('../fixtures/', import.meta.url)

/** A recorded object, parsed fresh each call so a test may change its copy. */
export function fixture<T extends KubernetesObject>(file: string): T {
  return JSON.parse(readFileSync(new URL(file, dir), 'utf8')) as T
}

/** The `items` of a recorded `kubectl get -o json` list. */
export function fixtureList<T extends KubernetesObject>(file: string): T[] {
  return (JSON.parse(readFileSync(new URL(file, dir), 'utf8')) as { items: T[] }).items
}

/** A recorded watch stream: one `{ type, object }` per line. */
export function fixtureEvents(file: string): { type: string; object: V1Pod }[] {
  return readFileSync(new URL(file, dir), 'utf8')
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => JSON.parse(line) as { type: string; object: V1Pod })
}

export const pod = (name: string): V1Pod => fixture<V1Pod>(`pod-${name}.json`)
export const namespaces = (): V1Namespace[] => fixtureList<V1Namespace>('namespaces.json')
export const namespace = (name: string): V1Namespace => namespaces().find((ns) => ns.metadata?.name === name)!
export const services = (): V1Service[] => fixtureList<V1Service>('services.json')
export const endpointSlices = (): V1EndpointSlice[] => fixtureList<V1EndpointSlice>('endpointslices.json')

/** Every recorded pod fixture, by short name. */
export const podNames = ['api', 'api2', 'web', 'node-exporter', 'terminating', 'migrate', 'report', 'sidecar', 'batch', 'cron', 'unscheduled'] as const
