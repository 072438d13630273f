#!/usr/bin/env bash
# Makes a fresh machine ready for the tests and the quickstart, and costs almost nothing when it
# already is: Debian packages (SoftHSM2, openssl, and what the test node runs), npm dependencies,
# and the control-plane and node binaries built from Go modules into a cache outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }

packages=(softhsm2 openssl
  # the test node: container runtime, CNI, kube-proxy's and kubelet's host tools, image building
  containerd runc containernetworking-plugins iptables conntrack socat ethtool ebtables kmod
  busybox-static umoci skopeo mmdebstrap buildah jq
  # a PKCS#11 module that reaches its token over a socket (testbed/hsm)
  p11-kit p11-kit-modules)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# npm ci only when node_modules is missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund
fi
if [ ! -f node_modules/pkcs11js/build/Release/pkcs11.node ]; then
  say "pkcs11js has no native addon: its install script did not run (check allowScripts in package.json)"
  exit 1
fi

bash testbed/control-plane/build.sh
bash testbed/node/build.sh
