import { rm } from 'node:fs/promises'
import type { AddressInfo, Server } from 'node:net'

/** Where a server listens: TCP, or a unix socket. */
export type ListenAddress = { readonly host: string; readonly port: number } | { readonly path: string }

/** Listens at `address` (a stale unix socket file is removed first); resolves once listening. */
export async function listenAt(server: Server, address: ListenAddress): Promise<void> {
  if ('path' in address) await rm(address.path, { force: true })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    const done = (): void => {
      server.off('error', reject)
      resolve()
    }
    if ('path' in address) server.listen(address.path, done)
    else server.listen(address.port, address.host, done)
  })
}

/** Where `server` listens now: the port chosen when 0 was asked. */
export function boundAddress(server: Server, address: ListenAddress): ListenAddress {
  if ('path' in address) return { path: address.path }
  const bound = server.address() as AddressInfo
  return { host: bound.address, port: bound.port }
}

/** Closes `server` and removes its unix socket file. */
export async function closeAt(server: Server, address: ListenAddress): Promise<void> {
  await new Promise<void>((resolve) => server.close(() => resolve()))
  if ('path' in address) await rm(address.path, { force: true })
}
