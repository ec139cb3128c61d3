#!/usr/bin/env bash
# Prepares this checkout on a Debian machine for one purpose or more:
#
#   bash scripts/setup.sh demo     what `npm run demo` needs
#   bash scripts/setup.sh bench    what `npm run bench` needs
#   bash scripts/setup.sh test     what `npm test` needs: every test, so the
#                                  demo's and the bench's sets too (the default)
#   bash scripts/setup.sh prebuilds  the cross compilers of `npm run prebuilds`
#   bash scripts/setup.sh --list demo   prints the Debian packages of a purpose
#
# It installs the Debian packages of those sets that are missing, installs
# npm packages when the lock file is newer than node_modules, and builds the
# native addons. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# The sets: one Debian package a line, then how to tell it is installed (a
# command on PATH, or an absolute path). To add a package, add its line to
# the set of the purpose that needs it.

# npm ci and the native addons (redirect's for namespaces and sockets, the
# proxy's for HBONE, which compiles against nghttp2's header).
build_set=(
  'make            make'
  'g++             g++'
  'python3         python3'
  'libnghttp2-dev  /usr/include/nghttp2/nghttp2.h'
)
# The local mesh: namespaces, capture rules, the packet capture of its report.
demo_set=(
  'iproute2        ip'
  'iptables        iptables'
  'nftables        nft'
  'tcpdump         tcpdump'
)
# The references the bench measures beside the mesh.
bench_set=(
  'stunnel4        stunnel4'
  'haproxy         haproxy'
  'iperf3          iperf3'
  'dnsperf         dnsperf'
)
# Peers we did not write, for the tests only.
test_set=(
  'openssl           openssl'
  'golang-go         go'
  'nghttp2-client    nghttp'
  'dnsutils          dig'
  'dnsmasq-base      dnsmasq'
  'protobuf-compiler protoc'
  'libprotobuf-dev   /usr/include/google/protobuf/any.proto'
  'python3-grpcio    /usr/lib/python3/dist-packages/grpc/__init__.py'
  'python3-protobuf  /usr/lib/python3/dist-packages/google/protobuf/__init__.py'
  'python3-cryptography /usr/lib/python3/dist-packages/cryptography/__init__.py'
  'qemu-user-static  /usr/bin/qemu-aarch64-static'
)
# Cross compilers for `npm run prebuilds` (arm64 and musl builds of the addons).
prebuilds_set=(
  'gcc-aarch64-linux-gnu  aarch64-linux-gnu-gcc'
  'musl-tools             musl-gcc'
)

list=false
if [ "${1:-}" = --list ]; then
  list=true
  shift
fi
purposes=("$@")
((${#purposes[@]} > 0)) || purposes=(test)
wanted=("${build_set[@]}")
for purpose in "${purposes[@]}"; do
  case "$purpose" in
    demo) wanted+=("${demo_set[@]}") ;;
    bench) wanted+=("${demo_set[@]}" "${bench_set[@]}") ;;
    # npm test runs the demo's and the bench's own tests too.
    test) wanted+=("${demo_set[@]}" "${bench_set[@]}" "${test_set[@]}") ;;
    prebuilds) wanted+=("${prebuilds_set[@]}") ;;
    *)
      echo "setup: unknown purpose '$purpose' (expected demo, bench, test or prebuilds)" >&2
      exit 2
      ;;
  esac
done

if $list; then
  for line in "${wanted[@]}"; do
    read -r package _ <<<"$line"
    echo "$package"
  done | sort -u
  exit 0
fi

missing=()
for line in "${wanted[@]}"; do
  read -r package check <<<"$line"
  if [[ "$check" == /* ]]; then
    [ -e "$check" ] && continue
  else
    command -v "$check" >/dev/null 2>&1 && continue
  fi
  [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
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
    echo "setup: continuing; what needs them will say so" >&2
  fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages (npm ci)"
  npm ci --no-audit --no-fund
fi

npm run native --workspaces --if-present --silent
