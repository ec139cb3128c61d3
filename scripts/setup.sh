#!/usr/bin/env bash
# Prepares this checkout on a Debian machine: installs the system tools (and
# headers) the mesh and its tests use when they are missing, installs npm packages when
# the lock file is newer than node_modules, and builds the native addons.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# command → Debian package that provides it
declare -A tools=(
  [ip]=iproute2
  [iptables]=iptables
  [nft]=nftables
  [tcpdump]=tcpdump
  [openssl]=openssl
  [go]=golang-go
  [stunnel4]=stunnel4
  [iperf3]=iperf3
  [haproxy]=haproxy
  [nghttp]=nghttp2-client
  [make]=make
  [g++]=g++
  [python3]=python3
  [protoc]=protobuf-compiler
)
# header → Debian package that provides it (the native HBONE data path
# compiles against nghttp2's header and uses the nghttp2 Node itself links)
declare -A headers=(
  [/usr/include/nghttp2/nghttp2.h]=libnghttp2-dev
)
missing=()
for command in "${!tools[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${tools[$command]}")
done
for header in "${!headers[@]}"; do
  [ -f "$header" ] || missing+=("${headers[$header]}")
done
# Foreign gRPC peers of the CA and Workload API tests: Debian's python3 modules (module:package).
for module in grpc:python3-grpcio google.protobuf:python3-protobuf cryptography:python3-cryptography; do
  /usr/bin/python3 -c "import ${module%%:*}" 2>/dev/null || missing+=("${module#*:}")
done
if ((${#missing[@]} > 0)); then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: install them as root: sudo apt-get install -y ${missing[*]}" >&2
    echo "setup: continuing; tests that need them will say so" >&2
  fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages (npm ci)"
  npm ci --no-audit --no-fund
fi

npm run native --workspaces --if-present --silent
