// The example of packages/redirect/README.md: test/examples.test.ts runs it and keeps the two identical.
import assert from 'node:assert/strict'
import { captureRules, renderIptables, renderNftables } from '@ambientkit/redirect'

// Istio's in-pod rules, plus DNS capture and a CIDR that is never captured.
const rules = captureRules({ captureDns: true, excludeOutboundCidrs: ['10.96.0.0/12'] })

const nft = renderNftables(rules) // one `inet ambientkit` table, replaced atomically by `nft -f`
assert.match(nft, /redirect to :15001/)
assert.match(nft, /ip daddr 10\.96\.0\.0\/12 .*return/)

const iptables = renderIptables(rules, 'ipv4') // `iptables-restore --noflush` input, chains of our own
assert.match(iptables, /-j REDIRECT --to-ports 15006/)

// Bad input never reaches the kernel: it is refused naming the option and the value.
assert.throws(() => captureRules({ outboundPort: 70000 }), /outboundPort/)
