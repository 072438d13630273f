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
  p11-kit p11-kit-modules
  # encrypted volumes: mkfs.ext4 -O encrypt for the fscrypt fixture (testbed/volume)
  e2fsprogs
  # promtool (check and unit-test the alerting rules) and a Prometheus the tests run themselves
  prometheus
  # a moved clock for one container (e2e/observability/liveAlerts: a rotation made overdue)
  libfaketime
  # headless rendering of the compliance report's HTML page (e2e/observability/complianceReport)
  chromium)
missing=()
# Installed means "install ok installed": a package removed without purging still answers dpkg -s.
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  # Packages install without starting their services (prometheus's postinst would start a
  # daemon): invoke-rc.d obeys policy-rc.d, whose exit 101 forbids every start. A temporary one,
  # only where the machine has none (Docker images ship one already).
  policy=/usr/sbin/policy-rc.d made_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && made_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$made_policy" ]; then rm -f "$policy"; trap - EXIT; fi
  # Should a service have started anyway (a systemd that ignores policy-rc.d), stop exactly its
  # processes: those of the prometheus system user (the Prometheus and node-exporter services).
  for pid in $(pgrep -u prometheus 2>/dev/null || true); do
    say "stopping a process the prometheus packages started: $(ps -o pid=,args= -p "$pid" || true)"
    kill "$pid" || true
  done
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

# Keyward's own addon (fscrypt, for `keyward volume`): built when missing or older than its source.
addon=native/build/Release/fscrypt.node
if [ ! -f "$addon" ] || [ native/fscrypt.c -nt "$addon" ] || [ native/binding.gyp -nt "$addon" ]; then
  say "building the fscrypt addon (npm run native:build)"
  npm run --silent native:build >/dev/null || true
fi
if [ ! -f "$addon" ]; then
  say "the fscrypt addon did not build: run npm run native:build and read its errors (it needs python3, make, a C compiler and Node's headers)"
  exit 1
fi

bash testbed/control-plane/build.sh
bash testbed/node/build.sh
