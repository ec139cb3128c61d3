import { createNativeTransport, createNodeTransport, createSameNodeTransport } from '@ambientkit/proxy'
import { nativeAddonOrSkip } from './support/native'
import { describeTransportContract } from './transport-contract'

// Every transport passes the same contract suite. The native one needs its
// addon (built by `npm run setup`; the CI fails rather than skips without it).
describeTransportContract({ name: 'node', transport: createNodeTransport, wire: true })
if (nativeAddonOrSkip('the native transport') !== undefined) {
  describeTransportContract({ name: 'native', transport: createNativeTransport, wire: true })
}
describeTransportContract({
  name: 'same-node',
  transport: () => createSameNodeTransport(),
  wire: false,
})
describeTransportContract({ name: 'same-node falling back to node (destinations served elsewhere)', transport: () => createSameNodeTransport({ fallback: createNodeTransport() }), wire: true })
