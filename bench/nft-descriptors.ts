/**
 * What one in-process nft run (`Netns.nft`, libnftables) costs while the
 * process holds many descriptors, as a node proxy with many pods does (four
 * a pod). For each count in `--held` (default 0,1000,4000), that many
 * descriptors are opened (the lowest hundred closed again, so a descriptor
 * the run opens lands low, as in a process that closed some early ones),
 * and `--runs` (default 50) `list tables` runs in a fresh namespace are
 * timed: median and p99 per count. The time should not depend on the count.
 *
 * Run as root: `npx tsx --tsconfig tsconfig.json bench/nft-descriptors.ts
 * [--held 0,1000,4000] [--runs 50] [--json]`.
 */
import { closeSync, openSync } from 'node:fs'
import { openNetns } from '@ambientkit/redirect'
import { createTestNetwork } from '../test/support/netns'
import { raiseFileLimit, report } from './lib/scale'
import { formatSummary, summarize, type Summary } from './lib/stats'
import { formatTable } from './lib/table'
import { PREFIX } from './lib/topology'

const args = process.argv.slice(2)
const option = (name: string): string | undefined => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : undefined)
const held = (option('held') ?? '0,1000,4000').split(',').map(Number)
const runs = Number(option('runs') ?? 50)
if (held.some((n) => !Number.isInteger(n) || n < 0 || n > 16_000) || !Number.isInteger(runs) || runs < 1) {
  process.stderr.write(`nft-descriptors: --held takes counts from 0 to 16000 separated by commas, --runs a whole number >= 1; got ${JSON.stringify(args)}\n`)
  process.exit(2)
}
const log = (message: string): void => void process.stderr.write(`nft-descriptors: ${message}\n`)

async function main(): Promise<void> {
  raiseFileLimit(Math.max(...held) + 1024, log)
  if (process.env.AMBIENTKIT_NFT === 'program') log('AMBIENTKIT_NFT=program: this times the nft program, not libnftables')
  const network = createTestNetwork(PREFIX)
  const results: Array<{ held: number; ms: Summary }> = []
  try {
    const ns = await network.addNamespace('nft')
    const netns = openNetns(ns.path)
    try {
      for (const count of held) {
        const fds = Array.from({ length: count }, () => openSync('/dev/null', 'r'))
        for (const fd of fds.splice(0, Math.min(100, fds.length))) closeSync(fd)
        try {
          await netns.nft('list tables')
          const times: number[] = []
          for (let i = 0; i < runs; i++) {
            const started = performance.now()
            await netns.nft('list tables')
            times.push(performance.now() - started)
          }
          results.push({ held: count, ms: summarize(times) })
          log(`${count} descriptors held: ${formatSummary(summarize(times))}`)
        } finally {
          for (const fd of fds) closeSync(fd)
        }
      }
    } finally {
      await netns.close()
    }
  } finally {
    await network.cleanup()
  }
  const rows = [['descriptors held', 'nft run (ms), median', 'p99'], ...results.map(({ held: count, ms }) => [String(count), ms.median.toFixed(2), ms.p99.toFixed(2)])]
  report(`\nOne in-process nft run (list tables) by descriptors held, ${runs} runs each:\n\n${formatTable(rows)}\n`, results)
}

main().catch((err: unknown) => {
  process.stderr.write(`nft-descriptors: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
