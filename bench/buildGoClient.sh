#!/usr/bin/env bash
# Builds one of the Go benchmark clients (bench/<name>: kms-load, csi-load) and
# prints the binary's path as the last line of stdout (progress goes to stderr).
# Usage: bench/buildGoClient.sh NAME
#
# The build happens in a throw-away Go module outside the repository, so the
# repository never holds a go.mod that tooling could take for the project's
# own. The binary is cached under a key derived from main.go and go.mod.in
# and reused while neither changes.
set -euo pipefail

name=${1:?usage: bench/buildGoClient.sh NAME (kms-load or csi-load)}
src_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/$name" && pwd)

log() { printf '%s build: %s\n' "$name" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    cat "$@" | sha256sum | cut -c1-12
  elif command -v shasum >/dev/null 2>&1; then
    cat "$@" | shasum -a 256 | cut -c1-12
  else
    die "step 'hash sources': neither sha256sum nor shasum is installed"
  fi
}

command -v go >/dev/null 2>&1 ||
  die "step 'find go': 'go' is not on PATH; install Go 1.26 or newer"

cache_root=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-${HOME:?set HOME, XDG_CACHE_HOME or KEYWARD_CACHE}/.cache}/keyward}
key=$(sha256_of "$src_dir/main.go" "$src_dir/go.mod.in")
out_dir=$cache_root/bench/$name-$key
bin=$out_dir/$name

if [[ -x $bin ]]; then
  log "reusing cached $bin"
  printf '%s\n' "$bin"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/$name-build.XXXXXX")
trap 'rm -rf "$work"; rm -f "${bin:?}.tmp.$$"' EXIT
cp "$src_dir/main.go" "$work/main.go"
cp "$src_dir/go.mod.in" "$work/go.mod"

log "resolving modules ($(go version))"
(cd "$work" && GOTOOLCHAIN=local go mod tidy) >&2 ||
  die "step 'resolve modules' failed: (cd $work && GOTOOLCHAIN=local go mod tidy); is Go 1.26+ installed and the Go module proxy reachable (GOPROXY=$(go env GOPROXY))?"

mkdir -p "$out_dir" || die "step 'create cache dir' failed: mkdir -p $out_dir"
# Build beside the final path and rename, so a concurrent run never sees a
# half-written binary.
log "building $bin"
(cd "$work" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -o "$bin.tmp.$$" .) >&2 ||
  die "step 'build' failed: (cd $work && CGO_ENABLED=0 go build -trimpath -o $bin.tmp.$$ .)"
mv -f "$bin.tmp.$$" "$bin"

printf '%s\n' "$bin"
