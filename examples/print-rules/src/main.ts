/**
 * Prints the capture rules @ambientkit/redirect would install for a
 * configuration: `iptables-restore` input per family and the `nft -f`
 * script. Needs no root and touches no kernel state.
 *
 *   npx tsx examples/print-rules/src/main.ts [--config '<json>'] [--backend iptables|nftables|all] [--explain]
 *
 * `--config` is a JSON CaptureConfig (default `{}`: Istio ambient's
 * defaults). `--explain` prints each rule with why it exists instead.
 * A bad configuration exits with status 2 and the error on stderr.
 */
import { isAmbientError } from '@ambientkit/core'
import { captureRules, renderIptables, renderNftables, type CaptureConfig, type CaptureRuleSet } from '@ambientkit/redirect'

interface Args {
  config: unknown
  backend: 'iptables' | 'nftables' | 'all'
  explain: boolean
}

function usage(message: string): never {
  console.error(`print-rules: ${message}`)
  console.error("usage: print-rules [--config '<json>'] [--backend iptables|nftables|all] [--explain]")
  process.exit(2)
}

function parseArgs(argv: readonly string[]): Args {
  const args: Args = { config: {}, backend: 'all', explain: false }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--explain') {
      args.explain = true
    } else if (arg === '--config') {
      const text = argv[++i] ?? usage('--config needs a JSON value')
      try {
        args.config = JSON.parse(text)
      } catch (err) {
        usage(`--config is not JSON: ${(err as Error).message}`)
      }
    } else if (arg === '--backend') {
      const value = argv[++i]
      if (value !== 'iptables' && value !== 'nftables' && value !== 'all') usage(`--backend must be iptables, nftables or all, got ${String(value)}`)
      args.backend = value
    } else {
      usage(`unknown argument ${String(arg)}`)
    }
  }
  return args
}

function explain(ruleSet: CaptureRuleSet): string {
  const out: string[] = []
  for (const rule of ruleSet.rules) {
    out.push(`# ${rule.stage} ${rule.hook}${rule.family === undefined ? '' : ` (${rule.family} only)`}: ${rule.why}`)
    out.push(`  nft: ${renderNftables({ ...ruleSet, rules: [rule] }).split('\n').find((line) => line.startsWith('\t\t') && !line.includes(' hook '))!.trim()}`)
  }
  const { mark, mask, table, priority } = ruleSet.routing
  out.push(`# routing (${ruleSet.families.join(', ')}): connections the proxy originated return to it through the local table`)
  out.push(`  ip rule add fwmark 0x${mark.toString(16)}/0x${mask.toString(16)} pref ${priority} lookup ${table}`)
  out.push(`  ip route add local default dev lo table ${table}`)
  return `${out.join('\n')}\n`
}

function main(): void {
  const args = parseArgs(process.argv.slice(2))
  let ruleSet: CaptureRuleSet
  try {
    ruleSet = captureRules(args.config as CaptureConfig)
  } catch (err) {
    if (isAmbientError(err)) {
      console.error(`print-rules: ${err.code}: ${err.message}`)
      process.exit(2)
    }
    throw err
  }
  if (args.explain) {
    process.stdout.write(explain(ruleSet))
    return
  }
  if (args.backend !== 'nftables') {
    for (const family of ruleSet.families) {
      process.stdout.write(`# iptables-restore --noflush (${family === 'ipv4' ? 'iptables' : 'ip6tables'})\n${renderIptables(ruleSet, family)}`)
    }
  }
  if (args.backend !== 'iptables') process.stdout.write(`# nft -f -\n${renderNftables(ruleSet)}`)
}

main()
