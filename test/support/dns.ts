import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import type { TestPod } from './netns'

/** A TXT answer of 10 × ~200 bytes: more than the resolver's 1200-byte UDP limit. */
const BIG_TXT = Array.from({ length: 10 }, (_, i) => `${i}${'x'.repeat(200)}`)

/**
 * dnsmasq, a resolver we did not write, in its own namespace: static
 * answers (TTL 77), a big TXT record, UDP answers capped at 1200 bytes
 * (truncated above), TCP, and NXDOMAIN for the rest of `.invalid` and
 * `cluster.local`.
 */
export async function startDnsmasq(pod: TestPod): Promise<ChildProcess> {
  const child = spawn('nsenter', [
    `--net=${pod.path}`,
    'dnsmasq',
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--user=root',
    '--group=root',
    '--pid-file=',
    `--listen-address=${pod.ipv4}`,
    '--bind-interfaces',
    '--port=53',
    '--address=/outside.test/192.0.2.10',
    // Answered from its own data only: NXDOMAIN for what it does not have.
    '--local=/invalid/',
    '--local=/cluster.local/',
    '--local-ttl=77',
    '--edns-packet-max=1200',
    '--log-facility=-',
    ...BIG_TXT.map((text) => `--txt-record=big.outside.test,${text}`),
  ])
  let output = ''
  // dnsmasq says "started" once its sockets are open.
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      output += chunk.toString()
      if (output.includes('started, version')) resolve()
    }
    child.stderr!.on('data', onData)
    child.stdout!.on('data', onData)
    child.once('exit', (code) => reject(new Error(`dnsmasq exited with ${code}: ${output}`)))
    child.once('error', reject)
  })
  return child
}

/** What dig printed, and its answer section as `[name, ttl, type, data]` rows. */
export async function dig(pod: TestPod, args: string[]): Promise<{ output: string; answers: string[][]; status: string }> {
  const { stdout } = await pod.exec('dig', ['+time=3', '+tries=1', ...args])
  const answers: string[][] = []
  let inAnswer = false
  for (const line of stdout.split('\n')) {
    if (line.startsWith(';; ANSWER SECTION')) inAnswer = true
    else if (line.trim() === '') inAnswer = false
    else if (inAnswer) {
      const [name = '', ttl = '', , type = '', ...data] = line.split(/\s+/)
      answers.push([name, ttl, type, data.join(' ')])
    }
  }
  return { output: stdout, answers, status: /status: (\w+)/.exec(stdout)?.[1] ?? '' }
}

/** Stops a process the test started, by its pid, and waits for it to exit. */
export async function stopProcess(child: ChildProcess | undefined): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill()
  await exited
}
