import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { startRelay, type RelayProcess, type RelayService } from './processes'

/**
 * A reference, not a baseline to beat: HAProxy relaying plain TCP between
 * the same two pods as stunnel (a process in each, the client side on
 * 127.0.0.1). No TLS, no HTTP/2, no capture, no policy, no log: the least
 * work a pair of proxies can do per byte and per connection, done by a
 * proxy built for it. What it adds over the direct path is what any two
 * proxies add on this machine (two more TCP connections per connection, two
 * more processes wanting a CPU), so it bounds from below what the mesh's
 * latency and connection rate can reach here.
 */

/** A running HAProxy: `pid` is its worker, the process that relays (`child`, the master, only supervises it). */
export type HaproxyProcess = RelayProcess

function config(routes: ReadonlyArray<{ name: string; bind: string; server: string }>): string {
  const lines = [
    'global',
    // One relaying thread per process, like stunnel's one process per end. It also
    // measured faster here than one per CPU (the default): on 2 cores the client,
    // the server and the other proxy want them too.
    '  nbthread 1',
    // The idle-memory run holds 1 000 connections; HAProxy sizes its descriptor
    // limit from maxconn and refuses to start above the process's limit.
    '  maxconn 4000',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 10m',
    '  timeout server 10m',
  ]
  for (const { name, bind, server } of routes) lines.push(`listen ${name}`, `  bind ${bind}`, `  server ${name} ${server}`)
  return `${lines.join('\n')}\n`
}

/**
 * Starts HAProxy in master-worker mode in `ns` and resolves once the master
 * reports "Loading success." (the worker has bound every listener). The pid
 * measured is the worker's, the process that relays.
 */
function start(ns: string, file: string): Promise<HaproxyProcess> {
  return startRelay(ns, 'haproxy', ['-W', '-db', '-f', file], (log) => {
    const worker = /New worker \((\d+)\) forked/.exec(log)
    return worker !== null && log.includes('Loading success.') ? Number(worker[1]) : undefined
  })
}

/** Starts the server side in `serverNs` (on every `tunnel` port), then the client side in `clientNs` (on `127.0.0.1:local`, relaying to `serverIp:tunnel`). */
export async function startHaproxyPair(options: {
  dir: string
  clientNs: string
  serverNs: string
  serverIp: string
  services: readonly RelayService[]
}): Promise<{ client: HaproxyProcess; server: HaproxyProcess }> {
  const serverFile = join(options.dir, 'haproxy-server.cfg')
  writeFileSync(serverFile, config(options.services.map((s) => ({ name: s.name, bind: `0.0.0.0:${s.tunnel}`, server: `127.0.0.1:${s.target}` }))))
  const clientFile = join(options.dir, 'haproxy-client.cfg')
  writeFileSync(clientFile, config(options.services.map((s) => ({ name: s.name, bind: `127.0.0.1:${s.local}`, server: `${options.serverIp}:${s.tunnel}` }))))
  const server = await start(options.serverNs, serverFile)
  const client = await start(options.clientNs, clientFile)
  return { client, server }
}
