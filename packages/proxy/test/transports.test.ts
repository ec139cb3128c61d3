import { createNativeTransport, createNodeTransport, createSameNodeTransport } from '@ambientkit/proxy'
import { nativeAddonOrSkip } from './support/native'
import { describeTransportContract } from './transport-contract'

// Every transport passes the same contract suite. The native one needs its
// addon (built by `npm run setup`; the CI fails rather than skips without it).
describeTransportContract({ name: 'node', transport: createNodeTransport, wire: true })
if (nativeAddonOrSkip('the native transport') !== undefined) {
  describeTransportContract({
    name: 'native',
    transport: createNativeTransport,
    wire: true,
    gaps: { "honours the server's SETTINGS_MAX_CONCURRENT_STREAMS": "the addon does not report the peer's SETTINGS yet; until it does, streams above the server's limit are refused and sent again" },
  })
}
describeTransportContract({ name: 'same-node', transport: () => createSameNodeTransport(), wire: false })
describeTransportContract({ name: 'same-node falling back to node (destinations served elsewhere)', transport: () => createSameNodeTransport({ fallback: createNodeTransport() }), wire: true })
