import { closeSync } from 'node:fs'
import { constants as osConstants } from 'node:os'
import { abortError, AmbientError, CoreErrorCode, invalidArgument, throwIfAborted, type AbortOptions, type Closable } from '@ambientkit/core'
import { nativeError, RedirectErrorCode } from './errors'
import { native } from './native'

/** One message received on a {@link SeqpacketSocket}. */
export interface SeqpacketMessage {
  /** The message; empty (with no descriptors) when the peer closed the connection. */
  readonly data: Buffer
  /**
   * Descriptors that came with it (SCM_RIGHTS), already close-on-exec. The
   * caller owns them and must close every one (`fs.closeSync`), whatever it
   * makes of the message.
   */
  readonly fds: readonly number[]
  /** The message was longer than `maxBytes`: the rest is lost (MSG_TRUNC). */
  readonly truncated: boolean
  /** More descriptors came than fit: the kernel closed the others (MSG_CTRUNC). */
  readonly controlTruncated: boolean
}

/** Options of {@link SeqpacketSocket.receive}. */
export interface SeqpacketReceiveOptions extends AbortOptions {
  /** The largest message expected; a longer one arrives `truncated`. Default 1024 (ZDS's buffer). */
  readonly maxBytes?: number
}

/**
 * A connected AF_UNIX SOCK_SEQPACKET socket: message boundaries kept, and
 * descriptors received with messages. Node offers neither.
 */
export interface SeqpacketSocket extends Closable {
  /** Sends one message, waiting while the peer's queue is full. */
  send(data: Buffer, options?: AbortOptions): Promise<void>
  /** The next message, waiting for one. One receive at a time. */
  receive(options?: SeqpacketReceiveOptions): Promise<SeqpacketMessage>
  /** Closes the socket; a pending send or receive rejects with `ERR_AMBIENT_CLOSED`. Idempotent. */
  close(): Promise<void>
}

/**
 * Connects to a SOCK_SEQPACKET unix socket (non-blocking, close-on-exec), as
 * ztunnel connects to istio-cni's ZDS socket.
 *
 * @throws `ERR_AMBIENT_REDIRECT_SOCKET` with the errno (`ENOENT`: nobody
 * listens there; `ECONNREFUSED`; `EAGAIN`: its backlog is full).
 *
 * @example
 * ```ts
 * import { connectSeqpacket } from '@ambientkit/redirect'
 *
 * const socket = connectSeqpacket('/var/run/ztunnel/ztunnel.sock')
 * await socket.send(Buffer.from([0x08, 0x01])) // ZDS hello, version 1
 * const { data, fds } = await socket.receive()
 * ```
 */
export function connectSeqpacket(path: string): SeqpacketSocket {
  if (typeof path !== 'string' || path.length === 0) throw invalidArgument('path', path, 'the path of a unix socket')
  try {
    return new Seqpacket(native().seqpacketConnect(path), path)
  } catch (err) {
    throw nativeError(RedirectErrorCode.Socket, `cannot connect to ${path}`, err, { path })
  }
}

class Seqpacket implements SeqpacketSocket {
  #fd: number | undefined
  readonly #path: string
  /** Cancels the wait in progress (there is at most one of each kind). */
  readonly #waits = new Set<() => void>()

  constructor(fd: number, path: string) {
    this.#fd = fd
    this.#path = path
  }

  #open(what: string): number {
    if (this.#fd === undefined) throw new AmbientError(CoreErrorCode.Closed, `${what}: the socket to ${this.#path} is closed`)
    return this.#fd
  }

  /** Waits until `fd` is readable or writable; rejects when closed or aborted. */
  #wait(kind: 'readable' | 'writable', signal: AbortSignal | undefined): Promise<void> {
    const fd = this.#open(kind === 'readable' ? 'receive' : 'send')
    const addon = native()
    return new Promise<void>((resolve, reject) => {
      let handle: object | undefined
      const finish = (err?: Error): void => {
        this.#waits.delete(cancel)
        signal?.removeEventListener('abort', onAbort)
        if (err === undefined) resolve()
        else reject(err)
      }
      const cancel = (): void => {
        if (handle !== undefined) addon.cancelWait(handle)
        finish(new AmbientError(CoreErrorCode.Closed, `the socket to ${this.#path} was closed`))
      }
      const onAbort = (): void => {
        if (handle !== undefined) addon.cancelWait(handle)
        finish(abortError(signal!, kind === 'readable' ? 'receive' : 'send'))
      }
      const callback = (errno: number): void => {
        if (errno === 0) finish()
        else finish(nativeError(RedirectErrorCode.Socket, `socket to ${this.#path} failed`, Object.assign(new Error(`poll: errno ${errno}`), { errno, syscall: 'poll' }), { path: this.#path }))
      }
      try {
        handle = kind === 'readable' ? addon.waitReadable(fd, callback) : addon.waitConnected(fd, callback)
      } catch (err) {
        finish(nativeError(RedirectErrorCode.Socket, `cannot wait on the socket to ${this.#path}`, err, { path: this.#path }))
        return
      }
      this.#waits.add(cancel)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  async send(data: Buffer, options: AbortOptions = {}): Promise<void> {
    if (!Buffer.isBuffer(data)) throw invalidArgument('send data', data, 'a Buffer')
    for (;;) {
      throwIfAborted(options.signal, 'send')
      try {
        native().seqpacketSend(this.#open('send'), data)
        return
      } catch (err) {
        if ((err as { errno?: number }).errno !== osConstants.errno.EAGAIN) {
          if (err instanceof AmbientError) throw err
          throw nativeError(RedirectErrorCode.Socket, `cannot send on the socket to ${this.#path}`, err, { path: this.#path })
        }
      }
      await this.#wait('writable', options.signal)
    }
  }

  async receive(options: SeqpacketReceiveOptions = {}): Promise<SeqpacketMessage> {
    const maxBytes = options.maxBytes ?? 1024
    if (!Number.isInteger(maxBytes) || maxBytes < 1 || maxBytes > 1 << 20) throw invalidArgument('maxBytes', maxBytes, 'an integer 1-1048576')
    for (;;) {
      throwIfAborted(options.signal, 'receive')
      let message: SeqpacketMessage | null
      try {
        message = native().seqpacketRecv(this.#open('receive'), maxBytes)
      } catch (err) {
        if (err instanceof AmbientError) throw err
        throw nativeError(RedirectErrorCode.Socket, `cannot receive on the socket to ${this.#path}`, err, { path: this.#path })
      }
      if (message !== null) return message
      await this.#wait('readable', options.signal)
    }
  }

  async close(): Promise<void> {
    if (this.#fd === undefined) return
    for (const cancel of [...this.#waits]) cancel()
    const fd = this.#fd
    this.#fd = undefined
    closeSync(fd)
  }
}
