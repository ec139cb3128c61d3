import type { HboneTunnel, TunnelProtocol, TunnelResult } from './contract'

/**
 * What every transport's tunnel does the same way: it reports its end
 * once, to one listener, also when that listener comes after the end.
 */
export abstract class SettlingTunnel implements HboneTunnel {
  abstract readonly protocol: TunnelProtocol
  #result: TunnelResult | undefined
  #listener: ((result: TunnelResult) => void) | undefined

  abstract reset(): void

  /** True once the tunnel has closed. */
  get closed(): boolean {
    return this.#result !== undefined
  }

  onClose(listener: (result: TunnelResult) => void): void {
    if (this.#result !== undefined) listener(this.#result)
    else this.#listener = listener
  }

  /** The transport reports the tunnel's end; later reports are ignored. */
  settle(result: TunnelResult): void {
    if (this.#result !== undefined) return
    this.#result = result
    const listener = this.#listener
    this.#listener = undefined
    listener?.(result)
  }
}
