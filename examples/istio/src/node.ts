import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createPolicyStore, createWorkloadRegistry, type Logger, type SocketAddress } from '@ambientkit/core'
import { createIdentityManager } from '@ambientkit/identity'
import { createIstioCaSource } from '@ambientkit/ca'
import { createNodeAgent } from '@ambientkit/agent'
import { createNodeProxy, type NodeProxy } from '@ambientkit/proxy'
import { createWdsClient, createZdsPodSource } from '@ambientkit/istio'
import type { IstioNodeConfig } from './config'

/** A running node agent in ztunnel's place. */
export interface IstioNode {
  readonly nodeProxy: NodeProxy
  /** Where its servers listen (the ports actually bound). */
  readonly addresses: { readonly status: SocketAddress; readonly stats: SocketAddress; readonly admin: SocketAddress }
  /** Stops following istio-cni and istiod, drains the proxies (at most `deadlineMs`) and closes everything. Pods stay captured: their traffic fails closed until the next agent is up. */
  close(deadlineMs?: number): Promise<void>
}

/** Options of {@link startIstioNode}. */
export interface StartOptions {
  /** Called once the status, stats and admin servers listen, before istiod's state is in: the kubelet sees "not ready" meanwhile. */
  readonly onListening?: (addresses: IstioNode['addresses']) => void
  /** Stops waiting for istiod (the start then rejects). */
  readonly signal?: AbortSignal
}

/**
 * Starts what ztunnel runs on a node: workloads and policies from istiod
 * (WDS), pods from istio-cni (ZDS, capture already applied), SVIDs from
 * istiod's CA with the node's projected token, a node proxy with
 * ztunnel's telemetry (metric labels, access-log fields), readiness once
 * istiod's state is in and istio-cni's snapshot reconciled.
 */
export async function startIstioNode(config: IstioNodeConfig, logger: Logger, options: StartOptions = {}): Promise<IstioNode> {
  const registry = createWorkloadRegistry()
  const policies = createPolicyStore()
  // The CA's key stays in istiod: the node proves with its token which node it is, and gets only its pods' identities.
  const identities = createIdentityManager({
    source: createIstioCaSource({
      address: config.ca.address,
      trustDomain: config.trustDomain,
      rootCertificates: () => readFileSync(config.ca.rootCertFile, 'utf8'),
      token: () => readFileSync(config.ca.tokenFile, 'utf8').trim(),
      clusterId: config.clusterId,
      logger,
    }),
    logger,
  })
  const nodeProxy = createNodeProxy({
    nodeName: config.nodeName,
    registry,
    policies,
    identities,
    admin: { host: config.addresses.admin.address, port: config.addresses.admin.port },
    accessLogFormat: 'ztunnel',
    logger,
  })
  const closers: Array<() => Promise<unknown> | unknown> = []
  try {
    const wds = config.wds === undefined ? undefined : createWdsClient({ ...config.wds, registry, policies, nodeProxy, logger })
    if (wds !== undefined) closers.push(() => wds.close())
    await nodeProxy.start()
    closers.push(() => nodeProxy.close())
    const status = await listen(config.addresses.status, (path, respond) => {
      if (path !== '/healthz/ready') return respond(404, 'not found\n')
      respond(nodeProxy.ready() ? 200 : 503, nodeProxy.ready() ? 'ready\n' : 'not ready\n')
    })
    closers.push(() => new Promise((resolve) => status.close(resolve)))
    const stats = await listen(config.addresses.stats, (path, respond) => {
      if (path !== '/metrics') return respond(404, 'not found\n')
      void nodeProxy.metrics.exposition?.().then(({ contentType, body }) => respond(200, body, contentType))
    })
    closers.push(() => new Promise((resolve) => stats.close(resolve)))
    const bound = (server: Server, address: SocketAddress): SocketAddress => ({ ...address, port: (server.address() as AddressInfo).port })
    const addresses = { status: bound(status, config.addresses.status), stats: bound(stats, config.addresses.stats), admin: nodeProxy.adminAddress()! }
    options.onListening?.(addresses)
    // Registered (not ready) from now on; it connects to istio-cni only once the agent watches it.
    const podSource = createZdsPodSource({ ...config.zds, registry, nodeProxy, logger })
    closers.push(() => podSource.close())
    // istiod before istio-cni: a pod's proxy starts with the workload istiod describes (its addresses).
    await wds?.start({ ...(options.signal === undefined ? {} : { signal: options.signal }) })
    const agent = createNodeAgent({ nodeProxy, podSource, logger })
    closers.push(() => agent.close())
    await agent.start()
    return {
      nodeProxy,
      addresses,
      async close(deadlineMs = 20_000) {
        await podSource.close()
        await nodeProxy.drain({ deadline: deadlineMs })
        await closeAll(closers)
        await identities.close()
      },
    }
  } catch (err) {
    await closeAll(closers)
    await identities.close()
    throw err
  }
}

async function closeAll(closers: Array<() => Promise<unknown> | unknown>): Promise<void> {
  for (const close of closers.splice(0).reverse()) await close()
}

/** A small HTTP server answering GETs by path. */
async function listen(address: SocketAddress, handle: (path: string, respond: (status: number, body: string, contentType?: string) => void) => void): Promise<Server> {
  const server = createServer((req, res) => {
    const respond = (status: number, body: string, contentType = 'text/plain'): void => void res.writeHead(status, { 'content-type': contentType }).end(body)
    handle(new URL(req.url ?? '/', 'http://localhost').pathname, respond)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(address.port, address.address, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return server
}
