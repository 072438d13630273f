# shellcheck shell=bash
# Progress and failure reporting shared by the build scripts (control plane, node, image).
# Set build_tag before sourcing; a script may define failure_hint FILE, which prints a cause it
# recognises in a failed step's output (appended to the failure line).

: "${build_tag:?set build_tag before sourcing buildSteps.sh}"

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$build_tag" -1 "$*" >&2; }
fail() { printf '[%s] FAILED: %s\n' "$build_tag" "$*" >&2; exit 1; }

# Runs a step; on failure names the step and the command and shows the tail of its output.
step() {
  local name=$1; shift
  local out; out=$(mktemp)
  log "$name: $*"
  if ! "$@" >"$out" 2>&1; then
    tail -n 30 "$out" >&2
    local hint=""
    if declare -F failure_hint >/dev/null; then hint=$(failure_hint "$out"); fi
    rm -f "$out"
    fail "step '$name' failed running: $*$hint"
  fi
  rm -f "$out"
}

# For steps that fetch Go modules: a refusing or silent module proxy, said plainly.
go_module_hint() {
  if grep -qiE 'dial tcp|i/o timeout|no such host|connection refused|proxyconnect|verifying .*: |403 Forbidden' "$1"; then
    printf ' (the Go module proxy or checksum database refused or did not answer: check GOPROXY=%s, GOSUMDB=%s and the network)' "$(go env GOPROXY)" "$(go env GOSUMDB)"
  fi
}
