import { describe, expect, it } from 'vitest'
import { parseMainArgs } from '../src/args'

describe("the node agent's command line", () => {
  it('reads --config in both forms, with the ConfigMap mount as default', () => {
    expect(parseMainArgs([])).toEqual({ config: '/etc/ambientkit/mesh.yaml', help: false })
    expect(parseMainArgs(['--config', '/tmp/mesh.yaml'])).toEqual({ config: '/tmp/mesh.yaml', help: false })
    expect(parseMainArgs(['--config=/tmp/mesh.yaml', '--help'])).toEqual({ config: '/tmp/mesh.yaml', help: true })
  })

  // Hand parsing read the argument after the last one (the node binary, without --config) as the config file.
  it.each([
    [['--confg', 'mesh.yaml'], /Unknown option '--confg'/],
    [['mesh.yaml'], /Unexpected argument 'mesh.yaml'/],
    [['--config'], /Option '--config <value>' argument missing/],
    [['--config='], /needs a file name/],
  ])('refuses %j', (argv, message) => {
    expect(() => parseMainArgs(argv)).toThrow(expect.objectContaining({ code: 'ERR_AMBIENT_INVALID_ARGUMENT', message: expect.stringMatching(message) }))
  })
})
