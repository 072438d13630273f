#!/usr/bin/env bash
# Builds what the test node needs on top of the control plane, into the same cache outside the
# repository, each piece keyed by version and reused when present:
#   $KEYWARD_CACHE/secrets-store-csi-driver/<version>/  the Secrets Store CSI driver, its CRDs and RBAC
#   $KEYWARD_CACHE/node-tools/<source hash>/            pause and registrar (testbed/node/go/nodetools)
#   $KEYWARD_CACHE/images/                              pause and busybox images as docker-archives
#   $KEYWARD_CACHE/node/manifest.json                   every path above, read by nodeArtifacts.ts
# kubelet, kube-scheduler and kube-proxy come from testbed/control-plane/build.sh, which must run first.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../control-plane/versions.env
. "$here/../control-plane/versions.env"
cache=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

build_tag=node-build
# shellcheck source=SCRIPTDIR/../buildSteps.sh
. "$here/../buildSteps.sh"
failure_hint() { go_module_hint "$1"; }

need_go() {
  command -v go >/dev/null 2>&1 || fail "Go is not installed: the node tools are built from Go modules and need go (1.26) on PATH"
}

need_command() { # command, Debian package
  command -v "$1" >/dev/null 2>&1 || fail "$1 is missing: install the Debian package $2 (npm run setup does, as root)"
}

k8s_dir=$cache/k8s/$KUBERNETES_VERSION
check_kubernetes() {
  local b
  for b in kubelet kube-scheduler kube-proxy; do
    [ -x "$k8s_dir/$b" ] || fail "$k8s_dir/$b is missing: run 'npm run control-plane:build' (testbed/control-plane/build.sh) first"
  done
  log "kubernetes $KUBERNETES_VERSION node binaries: $k8s_dir"
}

# The driver's CRDs and the RBAC its syncSecret feature and the driver itself need; copied out of
# the module cache so tests do not depend on GOMODCACHE.
driver_files=(
  secrets-store.csi.x-k8s.io_secretproviderclasses.yaml
  secrets-store.csi.x-k8s.io_secretproviderclasspodstatuses.yaml
  rbac-secretproviderclass.yaml
  rbac-secretprovidersyncing.yaml
)
driver_dir=$cache/secrets-store-csi-driver/$SECRETS_STORE_CSI_DRIVER_VERSION
build_driver() {
  local v=$SECRETS_STORE_CSI_DRIVER_VERSION out=$driver_dir module=sigs.k8s.io/secrets-store-csi-driver
  local missing=0 f
  [ -x "$out/secrets-store-csi-driver" ] || missing=1
  for f in "${driver_files[@]}"; do [ -f "$out/$f" ] || missing=1; done
  if [ $missing = 0 ]; then log "secrets-store-csi-driver $v: cached in $out"; return; fi
  need_go
  local dir; dir=$(mktemp -d "${TMPDIR:-/tmp}/keyward-build-sscsi.XXXXXX")
  log "secrets-store-csi-driver $v: builder module in $dir"
  # Not 'go install pkg@version': that reads the module's version list, which the proxy refuses.
  # monis.app/mlog is refused too (403): the committed shim stands in for it.
  (cd "$dir" && go mod init keyward.local/builder/sscsi >/dev/null 2>&1 \
    && go mod edit -require="$module@$v" -replace="monis.app/mlog=$here/go/mlog-shim") \
    || fail "go mod init/edit in $dir"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/secrets-store-csi-driver"\n' "$module" > "$dir/tools.go"
  step "resolve driver dependencies (go mod tidy)" bash -c "cd '$dir' && go mod tidy"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  step "compile secrets-store-csi-driver $v" bash -c "cd '$dir' && go build -trimpath \
    -ldflags '-s -w -X $module/pkg/version.BuildVersion=$v' -o '$out.tmp/secrets-store-csi-driver' $module/cmd/secrets-store-csi-driver"
  local src; src=$(cd "$dir" && go list -m -f '{{.Dir}}' "$module") || fail "go list -m $module in $dir"
  for f in "${driver_files[@]}"; do
    [ -f "$src/deploy/$f" ] || fail "$module@$v has no deploy/$f (check driver_files in $0 against this version)"
    install -m 0644 "$src/deploy/$f" "$out.tmp/$f"
  done
  rm -rf "$out" && mv "$out.tmp" "$out" && rm -rf "$dir"
  log "secrets-store-csi-driver $v: built into $out"
}

# Keyed by the module's sources, so an edit rebuilds. nodeArtifacts.ts computes the same hash:
# sha256 over the 'sha256sum' lines of the module's files, sorted by path, first 12 hex digits.
tools_src=$here/go/nodetools
tools_hash=$(cd "$tools_src" && find . -type f -print | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum | cut -c1-12)
tools_dir=$cache/node-tools/$tools_hash
build_node_tools() {
  local out=$tools_dir
  if [ -x "$out/pause" ] && [ -x "$out/registrar" ]; then log "node tools $tools_hash: cached in $out"; return; fi
  need_go
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  step "compile pause and registrar" bash -c "cd '$tools_src' && go build -trimpath -ldflags '-s -w' -o '$out.tmp/' ./cmd/pause ./cmd/registrar"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "node tools $tools_hash: built into $out"
}

# Images without a registry: a rootfs tar becomes one layer of an OCI image (umoci), exported as a
# docker-archive (skopeo) that 'ctr images import' takes. The tars are made with numeric root
# ownership, so no root and no unpack are needed.
image_dir=$cache/images
busybox_version=""
make_image() { # name tag rootfs-dir archive [umoci config args...]
  local name=$1 tag=$2 rootfs=$3 archive=$4; shift 4
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/keyward-image-$name.XXXXXX")
  local oci=$work/oci ref=localhost/keyward/$name:$tag
  chmod 0755 "$rootfs" # mktemp made it 0700; it becomes the image's /
  tar -C "$rootfs" --numeric-owner --owner=0 --group=0 --sort=name -cf "$work/layer.tar" .
  step "image $name: OCI layout" umoci init --layout "$oci"
  step "image $name: new image" umoci new --image "$oci:$tag"
  step "image $name: add rootfs layer" umoci raw add-layer --image "$oci:$tag" "$work/layer.tar"
  step "image $name: config" umoci config --image "$oci:$tag" "$@"
  mkdir -p "$image_dir"
  rm -f "$archive.tmp"
  # --insecure-policy: a local copy between two files, no signatures to check.
  step "image $name: docker-archive" skopeo --insecure-policy copy "oci:$oci:$tag" "docker-archive:$archive.tmp:$ref"
  mv "$archive.tmp" "$archive"
  rm -rf "$work"
  log "image $ref: $archive"
}

pause_archive=$image_dir/pause-$tools_hash.tar
pause_ref=localhost/keyward/pause:$tools_hash
build_pause_image() {
  if [ -f "$pause_archive" ]; then log "image $pause_ref: cached in $pause_archive"; return; fi
  local root; root=$(mktemp -d "${TMPDIR:-/tmp}/keyward-rootfs-pause.XXXXXX")
  install -m 0755 "$tools_dir/pause" "$root/pause"
  make_image pause "$tools_hash" "$root" "$pause_archive" --config.entrypoint /pause --config.user 65535:65535
  rm -rf "$root"
}

build_busybox_image() {
  local archive=$image_dir/busybox-$busybox_version.tar
  if [ -f "$archive" ]; then log "image localhost/keyward/busybox:$busybox_version: cached in $archive"; return; fi
  local root; root=$(mktemp -d "${TMPDIR:-/tmp}/keyward-rootfs-busybox.XXXXXX")
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
  chmod 1777 "$root/tmp"
  install -m 0755 /bin/busybox "$root/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  make_image busybox "$busybox_version" "$root" "$archive" --config.cmd /bin/sh --config.env PATH=/bin
  rm -rf "$root"
}

write_manifest() {
  local busybox_archive=$image_dir/busybox-$busybox_version.tar
  mkdir -p "$cache/node"
  jq -n \
    --arg kubernetes "$KUBERNETES_VERSION" --arg driverVersion "$SECRETS_STORE_CSI_DRIVER_VERSION" \
    --arg nodeTools "$tools_hash" --arg busyboxVersion "$busybox_version" \
    --arg kubelet "$k8s_dir/kubelet" --arg kubeScheduler "$k8s_dir/kube-scheduler" --arg kubeProxy "$k8s_dir/kube-proxy" \
    --arg driver "$driver_dir/secrets-store-csi-driver" \
    --arg crd1 "$driver_dir/${driver_files[0]}" --arg crd2 "$driver_dir/${driver_files[1]}" \
    --arg rbac1 "$driver_dir/${driver_files[2]}" --arg rbac2 "$driver_dir/${driver_files[3]}" \
    --arg pause "$tools_dir/pause" --arg registrar "$tools_dir/registrar" \
    --arg pauseArchive "$pause_archive" --arg pauseRef "$pause_ref" \
    --arg busyboxArchive "$busybox_archive" --arg busyboxRef "localhost/keyward/busybox:$busybox_version" \
    '{versions: {kubernetes: $kubernetes, secretsStoreCsiDriver: $driverVersion, nodeTools: $nodeTools, busybox: $busyboxVersion},
      kubelet: $kubelet, kubeScheduler: $kubeScheduler, kubeProxy: $kubeProxy,
      driver: $driver, driverCrds: [$crd1, $crd2], driverRbac: [$rbac1, $rbac2],
      pause: $pause, registrar: $registrar,
      images: {pause: {archive: $pauseArchive, ref: $pauseRef}, busybox: {archive: $busyboxArchive, ref: $busyboxRef}}}' \
    > "$cache/node/manifest.json.tmp"
  mv "$cache/node/manifest.json.tmp" "$cache/node/manifest.json"
}

start=$(date +%s)
need_command umoci umoci
need_command skopeo skopeo
need_command jq jq
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || fail "/bin/busybox is missing or not the static one: install the Debian package busybox-static"
# An image tag allows [A-Za-z0-9_.-]: drop the epoch and turn '+' and '~' into '-'.
busybox_version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null | sed -E 's/^[0-9]+://; s/[+~]/-/g')
[ -n "$busybox_version" ] || fail "cannot read the version of the Debian package busybox-static"
check_kubernetes
build_driver
build_node_tools
build_pause_image
build_busybox_image
write_manifest
log "node artifacts ready; manifest $cache/node/manifest.json ($(( $(date +%s) - start ))s)"
