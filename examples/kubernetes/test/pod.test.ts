import { describe, expect, it } from 'vitest'
import { isAmbientError, workloadIdentity } from '@ambientkit/core'
import { evaluatePod, podAddresses, podToWorkload, wantsAmbient, type PodDecision } from '../src/index'
import { namespace, pod } from './helpers/fixtures'

const node = { nodeName: 'worker-1' }

function skipped(decision: PodDecision): string {
  if (decision.enroll) throw new Error(`expected a skip, got an enrollment of ${decision.workload.name}`)
  return decision.reason
}

describe('evaluatePod on recorded pods', () => {
  it('enrolls a Running dual-stack pod of an ambient namespace, after its init containers completed', () => {
    const decision = evaluatePod(pod('api'), namespace('shop'), { ...node, trustDomain: 'prod.example' })
    expect(decision).toEqual({
      enroll: true,
      workload: {
        uid: '3f6c2b1a-8e4d-4c7b-9a15-0d2e6f8b1c47',
        name: 'api-7c9f8d5b6-x2k4q',
        namespace: 'shop',
        serviceAccount: 'api',
        node: 'worker-1',
        addresses: ['10.244.1.17', 'fd00:10:244:1::11'],
        protocol: 'HBONE',
        labels: { app: 'api', 'pod-template-hash': '7c9f8d5b6', version: 'v2' },
        trustDomain: 'prod.example',
      },
    })
    if (decision.enroll) expect(workloadIdentity(decision.workload)).toBe('spiffe://prod.example/ns/shop/sa/api')
  })

  it('enrolls a pod that opts in by its own label in a namespace that does not', () => {
    const decision = evaluatePod(pod('batch'), namespace('legacy'), node)
    expect(decision.enroll).toBe(true)
    if (decision.enroll) {
      expect(decision.workload.addresses).toEqual(['10.244.1.19'])
      expect(decision.workload).not.toHaveProperty('trustDomain')
    }
  })

  it('enrolls on the pod label alone while its namespace is not known yet', () => {
    expect(evaluatePod(pod('batch'), undefined, node).enroll).toBe(true)
    expect(skipped(evaluatePod(pod('api'), undefined, node))).toBe('not-ambient')
  })

  it('skips a pod labelled istio.io/dataplane-mode=none although its namespace is ambient', () => {
    const decision = evaluatePod(pod('web'), namespace('shop'), node)
    expect(skipped(decision)).toBe('opted-out')
    expect(decision).toMatchObject({ message: 'pod shop/web-5d8b7c9f4-qp7rt: labelled istio.io/dataplane-mode=none' })
  })

  it("skips a pod annotated ambient.istio.io/redirection: disabled, as istio-cni does, whatever its labels say", () => {
    for (const name of ['api', 'batch']) {
      const p = pod(name)
      p.metadata!.annotations = { ...p.metadata!.annotations, 'ambient.istio.io/redirection': 'disabled' }
      const decision = evaluatePod(p, namespace('shop'), node)
      expect(decision).toMatchObject({ enroll: false, reason: 'opted-out', message: `pod ${p.metadata!.namespace}/${p.metadata!.name}: annotated ambient.istio.io/redirection: disabled` })
      expect(wantsAmbient(p, namespace('shop'))).toBe(false)
    }
    // istio-cni writes "enabled" on pods it captured: that is no opt-out.
    const enabled = pod('api')
    enabled.metadata!.annotations = { 'ambient.istio.io/redirection': 'enabled' }
    expect(evaluatePod(enabled, namespace('shop'), node).enroll).toBe(true)
  })

  it('skips a pod of a namespace without the label', () => {
    expect(skipped(evaluatePod(pod('cron'), namespace('legacy'), node))).toBe('not-ambient')
  })

  it('skips host-network pods even in an ambient namespace', () => {
    expect(skipped(evaluatePod(pod('node-exporter'), namespace('shop'), node))).toBe('host-network')
  })

  it('skips host-network pods that opt in by label', () => {
    const p = pod('node-exporter')
    p.metadata!.labels!['istio.io/dataplane-mode'] = 'ambient'
    expect(skipped(evaluatePod(p, namespace('legacy'), node))).toBe('host-network')
  })

  it('skips a terminating pod', () => {
    const decision = evaluatePod(pod('terminating'), namespace('shop'), node)
    expect(skipped(decision)).toBe('terminating')
  })

  it('skips a Pending pod whose init container runs, although it has IPs', () => {
    const p = pod('migrate')
    expect(podAddresses(p)).toEqual(['10.244.1.31', 'fd00:10:244:1::1f'])
    const decision = evaluatePod(p, namespace('shop'), node)
    expect(skipped(decision)).toBe('not-running')
    expect(decision).toMatchObject({ message: 'pod shop/migrate-db-8tqzx: phase is Pending, not Running' })
  })

  it('skips a completed Job pod', () => {
    expect(skipped(evaluatePod(pod('report'), namespace('shop'), node))).toBe('not-running')
  })

  it('skips a pod with an Istio sidecar', () => {
    expect(skipped(evaluatePod(pod('sidecar'), namespace('shop'), node))).toBe('sidecar')
  })

  it('skips pods of other nodes and pods not scheduled yet', () => {
    expect(skipped(evaluatePod(pod('api2'), namespace('shop'), node))).toBe('other-node')
    const decision = evaluatePod(pod('unscheduled'), namespace('shop'), node)
    expect(skipped(decision)).toBe('other-node')
    expect(decision).toMatchObject({ message: 'pod shop/api-7c9f8d5b6-t6n4b: scheduled on no node yet, not "worker-1"' })
  })

  it('skips a Running pod without an IP', () => {
    const p = pod('api')
    delete p.status!.podIP
    delete p.status!.podIPs
    expect(skipped(evaluatePod(p, namespace('shop'), node))).toBe('no-ip')
  })

  it('reports an object that cannot be a workload as invalid instead of throwing', () => {
    const p = pod('api')
    delete p.metadata!.uid
    const decision = evaluatePod(p, namespace('shop'), node)
    expect(skipped(decision)).toBe('invalid')
    expect(decision).toMatchObject({ message: expect.stringContaining('uid') })
  })
})

describe('podToWorkload', () => {
  it('defaults the service account to "default", as the API server does', () => {
    const p = pod('api')
    delete p.spec!.serviceAccountName
    delete p.spec!.serviceAccount
    expect(podToWorkload(p).serviceAccount).toBe('default')
  })

  it('falls back to the single status.podIP and canonicalises IPv6', () => {
    const p = pod('api')
    delete p.status!.podIPs
    p.status!.podIP = 'FD00:10:244:1:0:0:0:11'
    expect(podToWorkload(p).addresses).toEqual(['fd00:10:244:1::11'])
  })

  it('maps a pod outside the mesh with protocol TCP for a registry', () => {
    expect(podToWorkload(pod('cron'), { protocol: 'TCP' })).toMatchObject({ protocol: 'TCP', namespace: 'legacy', serviceAccount: 'default' })
  })

  it('throws ERR_AMBIENT_INVALID_WORKLOAD naming the field for an object without a name', () => {
    const p = pod('api')
    delete p.metadata!.name
    try {
      podToWorkload(p)
      expect.unreachable()
    } catch (err) {
      expect(isAmbientError(err, 'ERR_AMBIENT_INVALID_WORKLOAD')).toBe(true)
      expect((err as Error).message).toContain('name')
    }
  })
})

describe('wantsAmbient', () => {
  it('lets the pod label win over the namespace label in both directions', () => {
    expect(wantsAmbient(pod('web'), namespace('shop'))).toBe(false)
    expect(wantsAmbient(pod('batch'), namespace('legacy'))).toBe(true)
    expect(wantsAmbient(pod('api'), namespace('shop'))).toBe(true)
    expect(wantsAmbient(pod('cron'), namespace('legacy'))).toBe(false)
  })
})
