// The DaemonSet is ztunnel's: its service account, mounts, environment and
// ports, and what it mounts is where the program looks by default.
import { readFileSync } from 'node:fs'
import { posix } from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseAllDocuments } from 'yaml'
import { ServiceAccount } from 'kubernetes-models/v1'
import { DaemonSet, type IDaemonSet } from 'kubernetes-models/apps/v1'
import { istioNodeConfig } from '../src/config'

const documents = parseAllDocuments(readFileSync(new URL('../manifests/ambientkit-ztunnel.yaml', import.meta.url), 'utf8')).map((doc) => {
  expect(doc.errors).toEqual([])
  return doc.toJS() as { kind: string }
})
const daemonSet = documents.find((d) => d.kind === 'DaemonSet') as IDaemonSet
const pod = daemonSet.spec!.template.spec!
const container = pod.containers[0]!

/** The environment the kubelet gives the container, field references resolved as on a node. */
function environment(): Record<string, string> {
  const fields: Record<string, string> = { 'metadata.name': 'ztunnel-x7k2p', 'metadata.namespace': 'istio-system', 'spec.nodeName': 'node-1', 'status.podIP': '10.244.1.7', 'spec.serviceAccountName': 'ztunnel' }
  return Object.fromEntries(container.env!.map((e) => [e.name, e.value ?? fields[e.valueFrom!.fieldRef!.fieldPath]!]))
}

/** The volume mounted at the directory holding `file` (resolved from the container's working directory), and the name of `file` in it. */
function mountOf(file: string): { volume: NonNullable<typeof pod.volumes>[number]; name: string } {
  const path = posix.resolve(container.workingDir ?? '/', file)
  const mount = container.volumeMounts!.find((m) => posix.dirname(path) === m.mountPath)
  expect(mount, `nothing mounted at ${posix.dirname(path)}`).toBeDefined()
  return { volume: pod.volumes!.find((v) => v.name === mount!.name)!, name: posix.basename(path) }
}

describe('the ztunnel DaemonSet', () => {
  it('is valid against the Kubernetes schemas, in istio-system under ztunnel’s name', () => {
    expect(documents.map((d) => d.kind)).toEqual(['ServiceAccount', 'DaemonSet'])
    new ServiceAccount(documents[0] as never).validate()
    new DaemonSet(daemonSet).validate()
    expect(daemonSet.metadata).toMatchObject({ name: 'ztunnel', namespace: 'istio-system' })
    expect(pod.serviceAccountName).toBe('ztunnel')
    expect(pod.hostNetwork).toBeUndefined()
  })

  it("mounts ztunnel's volumes where the program reads them by default", () => {
    const config = istioNodeConfig(environment())
    const root = mountOf(config.ca.rootCertFile)
    expect(root.volume.configMap).toEqual({ name: 'istio-ca-root-cert' })
    expect(root.name).toBe('root-cert.pem')
    const token = mountOf(config.ca.tokenFile)
    expect(token.volume.projected!.sources).toEqual([{ serviceAccountToken: { path: token.name, audience: 'istio-ca', expirationSeconds: 43200 } }])
    const socket = mountOf(config.zds.path ?? '/var/run/ztunnel/ztunnel.sock')
    expect(socket.volume.hostPath).toEqual({ path: '/var/run/ztunnel', type: 'DirectoryOrCreate' })
  })

  it("configures the program from ztunnel's environment: istiod for xDS and certificates, the node, the cluster", () => {
    const config = istioNodeConfig(environment())
    expect(config).toMatchObject({ nodeName: 'node-1', clusterId: 'Kubernetes', trustDomain: 'cluster.local', ca: { address: 'istiod.istio-system.svc:15012' } })
    expect(config.wds).toMatchObject({ address: 'istiod.istio-system.svc:15012', clusterId: 'Kubernetes', node: { ip: '10.244.1.7', podName: 'ztunnel-x7k2p', podNamespace: 'istio-system', nodeName: 'node-1' } })
  })

  it('probes readiness and exposes metrics on the ports the program serves them', () => {
    const { addresses } = istioNodeConfig(environment())
    expect(container.readinessProbe!.httpGet).toEqual({ port: addresses.status.port, path: '/healthz/ready' })
    expect(container.ports).toEqual([{ name: 'ztunnel-stats', containerPort: addresses.stats.port, protocol: 'TCP' }])
    expect(daemonSet.spec!.template.metadata!.annotations).toMatchObject({ 'prometheus.io/port': String(addresses.stats.port), 'prometheus.io/path': '/metrics' })
    expect(container.command).toEqual(['node', '/app/examples/istio/dist/main.js'])
    expect(container.securityContext!.capabilities).toEqual({ drop: ['ALL'], add: ['NET_ADMIN', 'SYS_ADMIN', 'NET_RAW'] })
  })
})
