import { readdirSync, readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { parseAllDocuments } from 'yaml'
import { ConfigMap, Namespace, Service, ServiceAccount } from 'kubernetes-models/v1'
import { DaemonSet, Deployment, type IDaemonSet, type IDeployment } from 'kubernetes-models/apps/v1'
import { ClusterRole, ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1'
import { loadAuthorizationPolicy } from '@ambientkit/core'
import { DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE } from '../src/index'

// Validators generated from the Kubernetes OpenAPI schemas, one per kind we ship.
const models: Record<string, { validate(object: unknown): void }> = {
  'v1/Namespace': { validate: (o) => new Namespace(o as never).validate() },
  'v1/ServiceAccount': { validate: (o) => new ServiceAccount(o as never).validate() },
  'v1/ConfigMap': { validate: (o) => new ConfigMap(o as never).validate() },
  'apps/v1/DaemonSet': { validate: (o) => new DaemonSet(o as never).validate() },
  'apps/v1/Deployment': { validate: (o) => new Deployment(o as never).validate() },
  'v1/Service': { validate: (o) => new Service(o as never).validate() },
  'rbac.authorization.k8s.io/v1/ClusterRole': { validate: (o) => new ClusterRole(o as never).validate() },
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': { validate: (o) => new ClusterRoleBinding(o as never).validate() },
}

interface Manifest {
  apiVersion: string
  kind: string
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
  [field: string]: unknown
}

const dir = new URL('../manifests/', import.meta.url)
const files = readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()

function parse(text: string, file: string): Manifest[] {
  return parseAllDocuments(text).map((doc, i) => {
    if (doc.errors.length > 0) throw new Error(`${file} document ${i}: ${doc.errors.map((e) => e.message).join('; ')}`)
    return doc.toJS() as Manifest
  })
}

const manifests = files.flatMap((file) => parse(readFileSync(new URL(file, dir), 'utf8'), file).map((m) => ({ file, m })))

function validate(m: Manifest): void {
  const model = models[`${m.apiVersion}/${m.kind}`]
  if (model === undefined) throw new Error(`no schema for ${m.apiVersion} ${m.kind}`)
  model.validate(m)
}

const find = <T = Manifest>(kind: string, name?: string): T => manifests.find(({ m }) => m.kind === kind && (name === undefined || m.metadata.name === name))!.m as T

type Rules = { rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[] }
const granted = (role: Rules): string[] =>
  role.rules.flatMap((rule) => rule.apiGroups.flatMap((group) => rule.resources.map((resource) => `${group}/${resource}:${[...rule.verbs].sort().join(',')}`))).sort()

describe('manifests', () => {
  it('cover every kind the guide applies', () => {
    expect(manifests.map(({ m }) => m.kind).sort()).toEqual([
      'ClusterRole', 'ClusterRole', 'ClusterRoleBinding', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet', 'Deployment', 'Namespace', 'Service', 'ServiceAccount', 'ServiceAccount',
    ])
  })

  it.each(manifests.map(({ file, m }) => [`${file}: ${m.kind} ${m.metadata.name}`, m] as const))('%s is valid against its OpenAPI schema', (_name, m) => {
    expect(() => validate(m)).not.toThrow()
  })

  it('fails validation for a broken manifest, so the check above can fail', () => {
    const daemonSet = structuredClone(find('DaemonSet')) as unknown as { spec: { template: { spec: { containers: { ports: { containerPort: unknown }[]; readinessProbe: { periodSeconds: unknown } }[] } } } }
    const deployment = structuredClone(find('Deployment')) as unknown as { spec: { template: { spec: { volumes: { projected?: unknown; secret: { defaultMode: unknown } }[] } } } }
    deployment.spec.template.spec.volumes[1]!.secret.defaultMode = 'rw'
    expect(() => validate(deployment as unknown as Manifest)).toThrow(/defaultMode must be integer/)
    daemonSet.spec.template.spec.containers[0]!.ports[0]!.containerPort = '15021'
    expect(() => validate(daemonSet as unknown as Manifest)).toThrow(/containerPort must be integer/)

    const noContainers = structuredClone(find('DaemonSet')) as unknown as { spec: { template: { spec: Record<string, unknown> } } }
    delete noContainers.spec.template.spec.containers
    expect(() => validate(noContainers as unknown as Manifest)).toThrow(/containers/)

    const binding = structuredClone(find('ClusterRoleBinding')) as unknown as { roleRef: Record<string, unknown> }
    delete binding.roleRef.name
    expect(() => validate(binding as unknown as Manifest)).toThrow(/name/)

    const data = structuredClone(find('ConfigMap')) as unknown as { data: Record<string, unknown> }
    data.data['mesh.yaml'] = { trustDomain: 'cluster.local' }
    expect(() => validate(data as unknown as Manifest)).toThrow(/must be string/)
  })

  it('grant the node agents only get, list and watch on pods, namespaces, services and endpointslices: no TokenReview, no secrets', () => {
    expect(granted(find<Rules>('ClusterRole', 'ambientkit-node'))).toEqual(['/namespaces:get,list,watch', '/pods:get,list,watch', '/services:get,list,watch', 'discovery.k8s.io/endpointslices:get,list,watch'])
    const binding = find<{ roleRef: { name: string }; subjects: { kind: string; name: string; namespace: string }[] }>('ClusterRoleBinding', 'ambientkit-node')
    const account = find('ServiceAccount', 'ambientkit-node')
    expect(binding.roleRef.name).toBe('ambientkit-node')
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: account.metadata.name, namespace: account.metadata.namespace }])
  })

  it('grant the control plane TokenReview and reading pods, nothing more', () => {
    expect(granted(find<Rules>('ClusterRole', 'ambientkit-control-plane'))).toEqual(['/pods:get,list', 'authentication.k8s.io/tokenreviews:create'])
    const binding = find<{ roleRef: { name: string }; subjects: unknown[] }>('ClusterRoleBinding', 'ambientkit-control-plane')
    expect(binding.roleRef.name).toBe('ambientkit-control-plane')
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'ambientkit-control-plane', namespace: 'ambientkit-system' }])
  })

  it('keep the CA key in the control-plane Deployment only; node agents get a projected token for the CA service', () => {
    const secretsOf = (spec: { volumes?: Array<{ secret?: { secretName?: string } }> }): string[] => (spec.volumes ?? []).flatMap((v) => (v.secret?.secretName ? [v.secret.secretName] : []))
    const daemonSet = find<IDaemonSet>('DaemonSet').spec!.template.spec!
    const deployment = find<IDeployment>('Deployment', 'ambientkit-control-plane').spec!.template.spec!
    expect(secretsOf(daemonSet)).toEqual([])
    expect(secretsOf(deployment)).toEqual(['ambientkit-ca'])
    expect(deployment.serviceAccountName).toBe('ambientkit-control-plane')
    expect(deployment.containers[0]!.securityContext).toMatchObject({ runAsNonRoot: true, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } })
    const token = daemonSet.volumes!.find((v) => v.name === 'istio-token')!.projected!.sources![0]!.serviceAccountToken
    expect(token).toEqual({ path: 'istio-token', audience: 'istio-ca', expirationSeconds: 43200 })
    const mounts = Object.fromEntries(daemonSet.containers[0]!.volumeMounts!.map((m) => [m.name, m.mountPath]))
    expect(mounts).toMatchObject({ 'istio-token': '/var/run/secrets/tokens', 'ca-root': '/var/run/secrets/istio', 'workload-api': '/var/run/ambientkit/workload-api' })
    // The node agents' configured CA address is the control plane's Service.
    const mesh = parse(find<{ data: Record<string, string> }>('ConfigMap').data['mesh.yaml']!, 'mesh.yaml')[0] as unknown as { caAddress: string }
    const service = find<{ metadata: { name: string; namespace: string }; spec: { ports: { port: number }[] } }>('Service', 'ambientkit-control-plane')
    expect(mesh.caAddress).toBe(`${service.metadata.name}.${service.metadata.namespace}.svc:${service.spec.ports[0]!.port}`)
  })

    it('run the node agent with host PID, its service account, capabilities, probe, scrape annotations, and never capture or inject it', () => {
    const ds = find<IDaemonSet>('DaemonSet')
    const pod = ds.spec!.template.spec!
    expect(pod.hostPID).toBe(true)
    expect(pod.hostNetwork).toBeUndefined()
    expect(pod.serviceAccountName).toBe(find('ServiceAccount').metadata.name)
    expect(pod.tolerations).toContainEqual({ operator: 'Exists' })
    const container = pod.containers[0]!
    expect(container.readinessProbe?.httpGet).toEqual({ path: '/healthz/ready', port: 15021 })
    expect(container.securityContext?.capabilities?.add).toEqual(expect.arrayContaining(['NET_ADMIN', 'SYS_ADMIN', 'NET_RAW']))
    expect(container.env).toContainEqual({ name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } })
    expect(ds.spec!.template.metadata?.annotations).toMatchObject({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '15020', 'prometheus.io/path': '/metrics' })
    expect(ds.spec!.template.metadata?.labels).toMatchObject({ [DATAPLANE_MODE_LABEL]: DATAPLANE_MODE_NONE, 'sidecar.istio.io/inject': 'false' })
    expect(ds.spec!.template.metadata?.annotations).toMatchObject({ 'sidecar.istio.io/inject': 'false' })
    // CAP_SYS_ADMIN implies privilege escalation in Kubernetes: the manifest must not claim otherwise.
    expect(container.securityContext).toMatchObject({ privileged: false, allowPrivilegeEscalation: true, seccompProfile: { type: 'RuntimeDefault' } })
    const mounts = Object.fromEntries((container.volumeMounts ?? []).map((v) => [v.name, v.mountPath]))
    expect(mounts).toMatchObject({ config: '/etc/ambientkit', netns: '/var/run/netns' })
    const volumes = new Set((pod.volumes ?? []).map((v) => v.name))
    for (const name of Object.keys(mounts)) expect(volumes.has(name)).toBe(true)
    expect(pod.volumes?.find((v) => v.name === 'config')?.configMap?.name).toBe(find('ConfigMap').metadata.name)
    for (const m of manifests.map(({ m }) => m).filter((m) => m.kind !== 'Namespace' && m.kind !== 'ClusterRole' && m.kind !== 'ClusterRoleBinding')) {
      expect(m.metadata.namespace).toBe(find('Namespace').metadata.name)
    }
  })

  it('ship a mesh config whose policies core accepts', () => {
    const config = find<{ data: Record<string, string> }>('ConfigMap')
    const mesh = parse(config.data['mesh.yaml']!, 'mesh.yaml')[0] as unknown as { trustDomain: string; policiesFile: string }
    expect(mesh.trustDomain).toBe('cluster.local')
    expect(mesh.policiesFile).toBe('/etc/ambientkit/policies.yaml')
    const policies = parse(config.data['policies.yaml']!, 'policies.yaml')[0] as unknown as unknown[]
    expect(policies.map((p) => loadAuthorizationPolicy(p).name)).toEqual(['api-allow-frontend', 'deny-plaintext'])
  })

  it('ship a Dockerfile on Node 26 (active LTS) slim with iptables, nftables and iproute2', () => {
    const dockerfile = readFileSync(new URL('../Dockerfile', import.meta.url), 'utf8')
    const stages = [...dockerfile.matchAll(/^FROM (\S+)/gm)].map((m) => m[1])
    expect(stages.at(-1)).toBe('node:26-bookworm-slim')
    const installs = dockerfile.match(/apt-get install[^\n]*\n?[^\n]*/g)!.at(-1)!
    for (const tool of ['iptables', 'nftables', 'iproute2']) expect(installs).toContain(tool)
  })
})
