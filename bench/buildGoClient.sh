#!/usr/bin/env bash
# Builds one of the Go benchmark clients (bench/load/cmd/<name>: kms-load,
# csi-load) and prints the binary's path as the last line of stdout (progress
# goes to stderr).
# Usage: bench/buildGoClient.sh NAME
#
# The module bench/load is built from a copy outside the repository with its
# go.mod.in as go.mod, so the repository never holds a go.mod that tooling
# could take for the project's own. The binary is cached under a key derived
# from the module's .go files and go.mod.in, and reused while none changes.
set -euo pipefail

name=${1:?usage: bench/buildGoClient.sh NAME (kms-load or csi-load)}
src_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/load" && pwd)

log() { printf '%s build: %s\n' "$name" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $name =~ ^[a-z0-9-]+$ && -d $src_dir/cmd/$name ]] ||
  die "no such client: $src_dir/cmd/$name (use kms-load or csi-load)"

# The module's sources, relative to src_dir: exactly what is hashed and built.
sources=()
while IFS= read -r f; do sources+=("$f"); done < <(
  cd "$src_dir" && find . -type f \( -name '*.go' -o -name go.mod.in \) | LC_ALL=C sort)

# Hashes each source's path and contents, so moving code between files
# changes the key too.
sha256_of_sources() {
  local hash
  if command -v sha256sum >/dev/null 2>&1; then
    hash=(sha256sum)
  elif command -v shasum >/dev/null 2>&1; then
    hash=(shasum -a 256)
  else
    die "step 'hash sources': neither sha256sum nor shasum is installed"
  fi
  (cd "$src_dir" && for f in "${sources[@]}"; do printf '%s\n' "$f"; cat "$f"; done) |
    "${hash[@]}" | cut -c1-12
}

command -v go >/dev/null 2>&1 ||
  die "step 'find go': 'go' is not on PATH; install Go 1.26 or newer"

cache_root=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-${HOME:?set HOME, XDG_CACHE_HOME or KEYWARD_CACHE}/.cache}/keyward}
key=$(sha256_of_sources)
out_dir=$cache_root/bench/$name-$key
bin=$out_dir/$name

if [[ -x $bin ]]; then
  log "reusing cached $bin"
  printf '%s\n' "$bin"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/$name-build.XXXXXX")
trap 'rm -rf "$work"; rm -f "${bin:?}.tmp.$$"' EXIT
for f in "${sources[@]}"; do
  mkdir -p "$work/$(dirname "$f")"
  cp "$src_dir/$f" "$work/$f"
done
mv "$work/go.mod.in" "$work/go.mod"

log "resolving modules ($(go version))"
(cd "$work" && GOTOOLCHAIN=local go mod tidy) >&2 ||
  die "step 'resolve modules' failed: (cd $work && GOTOOLCHAIN=local go mod tidy); is Go 1.26+ installed and the Go module proxy reachable (GOPROXY=$(go env GOPROXY))?"

mkdir -p "$out_dir" || die "step 'create cache dir' failed: mkdir -p $out_dir"
# Build beside the final path and rename, so a concurrent run never sees a
# half-written binary.
log "building $bin"
(cd "$work" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -o "$bin.tmp.$$" "./cmd/$name") >&2 ||
  die "step 'build' failed: (cd $work && CGO_ENABLED=0 go build -trimpath -o $bin.tmp.$$ ./cmd/$name)"
mv -f "$bin.tmp.$$" "$bin"

printf '%s\n' "$bin"
