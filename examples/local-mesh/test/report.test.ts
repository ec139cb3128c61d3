import { describe, expect, it } from 'vitest'
import { formatReport, type DemoReport } from '../src/report'

// The text report of the add/remove phase: when background requests failed, it says why.

function report(errors: string[]): DemoReport {
  return {
    mesh: { trustDomain: 'cluster.local', nodes: [], pods: [], services: [], policies: [] },
    flows: [],
    addRemove: { pod: 'shop/api-late', enrolledInMs: 120, releasedInMs: 80, background: { from: 'shop/frontend', to: 'shop/api', sent: 4, reached: 4 - errors.length, errors } },
    capture: {
      link: 'n1-n2',
      packets: 0,
      connectionsByPort: {},
      tlsRecords: { handshake: 0, applicationData: 0, alert: 0, changeCipherSpec: 0 },
      nonTlsBytesOn15008: 0,
      plaintextBytes: 0,
      markersFound: [],
      meshMarkers: 0,
      meshMarkersSeen: [],
      plaintextMarkers: 0,
      plaintextMarkersSeen: 0,
    },
    checks: [],
    ok: errors.length === 0,
  }
}

describe('formatReport: adding and removing a pod while traffic runs', () => {
  it('quotes why background requests failed', () => {
    expect(formatReport(report(['connection closed without an answer']))).toContain(
      '3/4 requests shop/frontend → shop/api reached meanwhile (failed: connection closed without an answer).',
    )
  })

  it('says nothing more when every request reached', () => {
    expect(formatReport(report([]))).toContain('4/4 requests shop/frontend → shop/api reached meanwhile.')
  })
})
