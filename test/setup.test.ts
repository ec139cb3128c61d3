import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'

// scripts/setup.sh installs per purpose: the demo must not pull in the
// toolchains and servers that only the interop tests and the bench use.
const root = new URL('..', import.meta.url).pathname
const list = (...purposes: string[]): string[] =>
  execFileSync('bash', ['scripts/setup.sh', '--list', ...purposes], { cwd: root, encoding: 'utf8' }).trim().split('\n')
const scripts = (JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { scripts: Record<string, string> }).scripts

describe('scripts/setup.sh', () => {
  it('gives the demo what it runs, and not the peers of the tests or the references of the bench', () => {
    const demo = list('demo')
    expect(demo).toEqual(expect.arrayContaining(['iproute2', 'iptables', 'nftables', 'tcpdump', 'libnghttp2-dev', 'make', 'g++', 'python3']))
    for (const other of ['golang-go', 'haproxy', 'stunnel4', 'iperf3', 'nghttp2-client']) expect(demo).not.toContain(other)
  })

  it('gives the bench its references, and the tests everything the demo and the bench need besides their peers', () => {
    expect(list('bench')).toEqual(expect.arrayContaining([...list('demo'), 'haproxy', 'stunnel4', 'iperf3']))
    expect(list('test')).toEqual(expect.arrayContaining([...list('bench'), 'golang-go', 'openssl']))
    expect(list()).toEqual(list('test'))
  })

  it('is asked for its set by each command', () => {
    expect(scripts.demo).toMatch(/^bash scripts\/setup\.sh demo && /)
    expect(scripts.bench).toMatch(/^bash scripts\/setup\.sh bench && /)
    expect(scripts.test).toMatch(/^bash scripts\/setup\.sh test && /)
    expect(readFileSync(`${root}.ci/run`, 'utf8')).toContain('scripts/setup.sh test')
  })

  it('refuses a purpose it does not know', () => {
    expect(() => execFileSync('bash', ['scripts/setup.sh', '--list', 'dmeo'], { cwd: root, stdio: 'pipe' })).toThrow(/unknown purpose 'dmeo'/)
  })
})
