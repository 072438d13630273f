#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kubectl, helm and the node's kubelet,
# kube-scheduler and kube-proxy from their Go modules, each project in its own throw-away builder
# module, into a cache outside the repository keyed by version:
#   $KEYWARD_CACHE/{k8s,etcd,helm}/<version>/<binary>
# A binary already in the cache is reused. Every step prints what it runs and fails naming it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

build_tag=build
# shellcheck source=SCRIPTDIR/../buildSteps.sh
. "$here/../buildSteps.sh"
failure_hint() { go_module_hint "$1"; }

go_line=""
# Checked once, and only when something must be built: a warm cache needs no Go at all.
# The proxy answers a version list quickly; asking first gives a clear error instead of a
# stall halfway through a dependency download.
prepare_build() {
  [ -z "$go_line" ] || return 0
  command -v go >/dev/null 2>&1 || fail "Go is not installed: the control plane is built from Go modules and needs go (1.26 for Kubernetes 1.36) on PATH"
  go_line=$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
  local out
  if ! out=$(timeout 60 go list -m -versions "k8s.io/kubernetes" 2>&1); then
    fail "the Go module proxy is unreachable (GOPROXY=$(go env GOPROXY)); 'go list -m -versions k8s.io/kubernetes' said: ${out:0:400}"
  fi
}

new_builder() { # name -> path of a fresh builder module
  local dir; dir=$(mktemp -d "${TMPDIR:-/tmp}/keyward-build-$1.XXXXXX")
  (cd "$dir" && go mod init "keyward.local/builder/$1" >/dev/null 2>&1) || fail "go mod init in $dir"
  echo "$dir"
}

version_ldflags() { # k8s version -> -X flags so /version reports the real release
  local v=$1 major minor
  major=$(echo "$v" | sed -E 's/^v([0-9]+)\..*/\1/')
  minor=$(echo "$v" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION out=$cache/k8s/$KUBERNETES_VERSION
  local bins=(kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy)
  # Only what is missing is compiled: a cache from before the node binaries keeps its three.
  local missing=() b
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || missing+=("$b"); done
  if [ ${#missing[@]} = 0 ]; then log "kubernetes $v: cached in $out"; return; fi
  prepare_build
  local dir; dir=$(new_builder kubernetes)
  log "kubernetes $v: builder module in $dir"
  step "download k8s.io/kubernetes@$v" bash -c "cd '$dir' && go mod download -json k8s.io/kubernetes@$v > mod.json"
  local gomod; gomod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' "$dir/mod.json")
  [ -f "$gomod" ] || fail "no go.mod for k8s.io/kubernetes@$v in the module cache"
  # Upstream requires its staging modules at v0.0.0 and replaces them with local paths;
  # point each at its published release instead (k8s v1.N.P -> v0.N.P).
  local staging_v="v0.${v#v1.}"
  local staging; staging=$(sed -n -E 's#^\s*(k8s\.io/[a-z0-9-]+) => \./staging/.*#\1#p' "$gomod")
  [ -n "$staging" ] || fail "could not read the staging modules from $gomod"
  local godebug; godebug=$(grep -E '^godebug ' "$gomod" || true)
  local up_go; up_go=$(sed -n -E 's/^go ([0-9.]+)$/\1/p' "$gomod")
  case "$up_go" in
    "$go_line"|"$go_line".*) ;;
    *) fail "kubernetes $v needs Go $up_go but the installed Go is $(go env GOVERSION); set KUBERNETES_VERSION in versions.env to a release built with Go $go_line" ;;
  esac
  {
    echo "module keyward.local/builder/kubernetes"
    echo "go $up_go"
    [ -n "$godebug" ] && echo "$godebug"
    echo "require k8s.io/kubernetes $v"
    local m; for m in $staging; do echo "replace $m => $m $staging_v"; done
  } > "$dir/go.mod"
  # Every command, even one already cached, so go mod tidy records all their dependencies
  # (without kube-proxy here: 'missing go.sum entry ... k8s.io/kube-proxy/config/v1alpha1').
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for b in "${bins[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
    printf ')\n'
  } > "$dir/tools.go"
  step "resolve kubernetes dependencies (go mod tidy)" bash -c "cd '$dir' && go mod tidy"
  local pkgs=() ; for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  step "compile ${missing[*]} (the long step: ~10-20 min cold on 2 cores)" bash -c \
    "cd '$dir' && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags '$(version_ldflags "$v")' -o '$out.tmp/' ${pkgs[*]}"
  mkdir -p "$out"
  for b in "${missing[@]}"; do mv "$out.tmp/$b" "$out/$b" || fail "moving $b into $out"; done
  rm -rf "$out.tmp" "$dir"
  log "kubernetes $v: built ${missing[*]} into $out"
}

build_etcd() {
  local v=$ETCD_VERSION out=$cache/etcd/$ETCD_VERSION
  if [ -x "$out/etcd" ]; then log "etcd $v: cached in $out"; return; fi
  prepare_build
  local dir; dir=$(new_builder etcd)
  log "etcd $v: builder module in $dir"
  (cd "$dir" && go mod edit -go="$go_line" -require="go.etcd.io/etcd/server/v3@$v") || fail "go mod edit in $dir"
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$dir/tools.go"
  step "resolve etcd dependencies (go mod tidy)" bash -c "cd '$dir' && go mod tidy"
  mkdir -p "$out.tmp"
  step "compile etcd" bash -c "cd '$dir' && go build -trimpath -ldflags '-s -w' -o '$out.tmp/etcd' go.etcd.io/etcd/server/v3"
  rm -rf "$out" && mv "$out.tmp" "$out" && rm -rf "$dir"
  log "etcd $v: built into $out"
}

build_helm() {
  local v=$HELM_VERSION out=$cache/helm/$HELM_VERSION
  if [ -x "$out/helm" ]; then log "helm $v: cached in $out"; return; fi
  prepare_build
  mkdir -p "$out.tmp"
  step "compile helm $v (go install)" env GOBIN="$out.tmp" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$v" "helm.sh/helm/v3/cmd/helm@$v"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "helm $v: built into $out"
}

start=$(date +%s)
build_etcd
build_kubernetes
build_helm
log "control-plane binaries ready in $cache ($(( $(date +%s) - start ))s)"
