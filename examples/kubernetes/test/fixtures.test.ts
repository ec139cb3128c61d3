import { describe, expect, it } from 'vitest'
import { Namespace, Pod, Service } from 'kubernetes-models/v1'
import { EndpointSlice } from 'kubernetes-models/discovery.k8s.io/v1'
import { endpointSlices, fixtureEvents, namespaces, pod, podNames, services } from './helpers/fixtures'

// The recorded objects the mapping is tested on must be objects an API
// server could have returned: checked against the Kubernetes OpenAPI schemas.
describe('recorded fixtures', () => {
  it.each(podNames.map((name) => [name]))('pod %s is a valid Pod', (name) => {
    expect(() => new Pod(pod(name) as never).validate()).not.toThrow()
  })

  it('namespaces, services and endpoint slices are valid', () => {
    for (const ns of namespaces()) new Namespace(ns as never).validate()
    for (const service of services()) new Service(service as never).validate()
    for (const slice of endpointSlices()) new EndpointSlice(slice as never).validate()
    expect(namespaces()).toHaveLength(4)
  })

  it('every object of the recorded watch stream is a valid Pod, with increasing resource versions', () => {
    const recorded = fixtureEvents('watch-pod-lifecycle.jsonl')
    for (const { object } of recorded) new Pod(object as never).validate()
    const versions = recorded.map((e) => Number(e.object.metadata!.resourceVersion))
    expect(versions).toEqual([...versions].sort((a, b) => a - b))
  })
})
