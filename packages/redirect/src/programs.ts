/** The Debian package that provides each program this package runs. */
const DEBIAN_PACKAGES: Readonly<Record<string, string>> = {
  iptables: 'iptables',
  'iptables-save': 'iptables',
  'iptables-restore': 'iptables',
  ip6tables: 'iptables',
  'ip6tables-save': 'iptables',
  'ip6tables-restore': 'iptables',
  nft: 'nftables',
  ip: 'iproute2',
  ss: 'iproute2',
}

/** "install it with apt-get install X" for programs we know, a generic hint otherwise. */
export function installHint(program: string): string {
  const name = program.slice(program.lastIndexOf('/') + 1)
  const pkg = DEBIAN_PACKAGES[name]
  return pkg === undefined
    ? `is "${name}" installed and on PATH?`
    : `it is in the Debian package "${pkg}" (apt-get install ${pkg})`
}
