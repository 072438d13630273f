#!/usr/bin/env bash
# Builds the Keyward image from the repository's Dockerfile without a daemon or a registry:
#   1. a Debian bookworm rootfs made with mmdebstrap (cached by suite + package list), imported
#      into buildah's storage as the Dockerfile's BASE_IMAGE;
#   2. `buildah bud --layers` on the Dockerfile (chroot isolation, storage under the cache);
#   3. the image written as an OCI archive and as a docker-archive (`ctr images import` takes it).
# The tag is a hash of the build inputs, so an unchanged tree reuses the archives at once.
# Progress goes to standard error; the last line on standard output is JSON:
#   {"image":"localhost/keyward/keyward:dev-<hash>","ociArchive":"...","dockerArchive":"..."}
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}
images=$cache/images
work=$cache/image
mirror=${KEYWARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${KEYWARD_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm
# The base only needs apt (the Dockerfile installs the rest) and passwd (useradd, and
# softhsm2-common's postinst runs groupadd).
base_variant=apt
base_packages=passwd
# merged /usr set up by mmdebstrap's hook (usr-is-merged) rather than the usrmerge package,
# which would pull all of perl into the image; no docs, manuals or translations.
base_options=(
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --aptopt='Acquire::Languages "none"'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt "$1"/var/log/dpkg.log'
  --skip=output/dev
)

build_tag=image
# shellcheck source=SCRIPTDIR/../buildSteps.sh
. "$here/../buildSteps.sh"

# Like step, for the long build: its STEP lines are shown as they come.
step_steps() {
  local name=$1; shift
  local out; out=$(mktemp)
  log "$name: $*"
  if ! "$@" 2>&1 | tee "$out" | { grep --line-buffered -E '^(\[[0-9]+/[0-9]+\] )?STEP ' || true; } | cut -c1-150 >&2; then
    tail -n 30 "$out" >&2
    rm -f "$out"
    fail "step '$name' failed running: $*"
  fi
  rm -f "$out"
}

[ "$(id -u)" = 0 ] || fail "the daemonless build needs root (mmdebstrap and buildah's chroot isolation)"
for tool in git sha256sum mmdebstrap buildah; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (Debian: apt-get install -y --no-install-recommends mmdebstrap buildah)"
done

base_key=$(printf '%s\n' "$suite" "$base_variant" "$base_packages" "${base_options[@]}" "$mirror" "$security_mirror" | sha256sum | cut -c1-12)
base_ref=localhost/keyward/debian-base:$suite-$base_key

# Build inputs: the Dockerfile and package files, and every source file Git knows (tracked, or
# new and not ignored) outside e2e/, testbed/, bench/ and docs/. Content is read from the working tree.
input_hash() {
  cd "$repo"
  {
    echo "base $base_ref"
    { printf '%s\n' Dockerfile .dockerignore package.json package-lock.json tsconfig.json
      git ls-files --cached --others --exclude-standard | grep -Ev '^(e2e|testbed|bench|docs)/'
    } | sort -u | while IFS= read -r f; do
      if [ -f "$f" ]; then printf '%s %s\n' "$(sha256sum < "$f" | cut -c1-64)" "$f"; fi
    done
  } | sha256sum | cut -c1-12
}

tag=dev-$(input_hash)
ref=localhost/keyward/keyward:$tag
oci_archive=$images/keyward-$tag.oci.tar
docker_archive=$images/keyward-$tag.tar
result() { printf '{"image":"%s","ociArchive":"%s","dockerArchive":"%s"}\n' "$ref" "$oci_archive" "$docker_archive"; }

if [ -f "$oci_archive" ] && [ -f "$docker_archive" ]; then
  log "$ref: archives cached in $images"
  result
  exit 0
fi

mkdir -p "$images" "$work"
# One build at a time per cache: buildah's storage and the archives are shared.
exec 9>"$work/lock"
flock 9
if [ -f "$oci_archive" ] && [ -f "$docker_archive" ]; then
  log "$ref: built meanwhile by another run"
  result
  exit 0
fi
start=$(date +%s)

bah() { buildah --root "$work/buildah/root" --runroot "$work/buildah/runroot" --storage-driver overlay "$@"; }
# A failed or interrupted build leaves its working container mounted: remove it (we hold the lock).
trap 'bah rm --all >/dev/null 2>&1 || true' EXIT

base_tar=$work/base/$suite-$base_key.tar
if [ ! -f "$base_tar" ]; then
  mkdir -p "$work/base"
  # Sources as debian:bookworm-slim has them, so the Dockerfile's apt-get works the same.
  step "base rootfs (mmdebstrap $suite, $base_variant + $base_packages)" mmdebstrap \
    --variant="$base_variant" --include="$base_packages" "${base_options[@]}" \
    --format=tar "$suite" "$base_tar.tmp" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security_mirror $suite-security main"
  mv "$base_tar.tmp" "$base_tar"
fi

if ! bah inspect --type image "$base_ref" >/dev/null 2>&1; then
  log "importing the base rootfs into buildah as $base_ref"
  ctr=$(bah from --quiet scratch)
  step "add base rootfs" bah add "$ctr" "$base_tar" /
  # The image config debian:bookworm-slim has: PATH is how the entrypoint finds node.
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$ctr"
  step "commit base" bah commit --quiet --rm "$ctr" "$base_ref"
fi

# The host's CA bundle reaches the registry downloads as a build secret, for machines behind a
# TLS-intercepting proxy; it is not part of any layer.
ca_bundle=${KEYWARD_BUILD_CA:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
secret=()
[ -s "$ca_bundle" ] && secret=(--secret "id=build-ca,src=$ca_bundle")
step_steps "buildah bud Dockerfile -> $ref" bah bud --isolation chroot --layers --force-rm --pull=never "${secret[@]}" \
  --build-arg BASE_IMAGE="$base_ref" -f "$repo/Dockerfile" -t "$ref" "$repo"

step "write $oci_archive" bah push --quiet "$ref" "oci-archive:$oci_archive.tmp:$ref"
step "write $docker_archive" bah push --quiet "$ref" "docker-archive:$docker_archive.tmp:$ref"
mv "$oci_archive.tmp" "$oci_archive"
mv "$docker_archive.tmp" "$docker_archive"

# Older dev tags: keep the five newest archive pairs and untag the rest (their layers stay
# cached under the build's intermediate images).
ls -1t "$images"/keyward-dev-*.oci.tar | tail -n +6 | while IFS= read -r old; do
  old_tag=$(basename "$old" .oci.tar); old_tag=${old_tag#keyward-}
  rm -f "$old" "$images/keyward-$old_tag.tar"
  bah rmi "localhost/keyward/keyward:$old_tag" >/dev/null 2>&1 || true
done

log "$ref built in $(( $(date +%s) - start ))s"
result
