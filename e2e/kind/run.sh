#!/usr/bin/env bash
# Keyward on a kind cluster, the way a user installs it: the image built with Docker and loaded
# into the node, the Secrets Store CSI driver from its Helm repository, a SoftHSM2 token on the
# node, the PIN Secret, `helm install` of charts/keyward; then the checks the real-node tests run
# (e2e/install/clusterChecks.ts, through dist/e2e/kind/kindChecks.js).
#
#   e2e/kind/run.sh            keep the cluster afterwards (default; KEEP_CLUSTER=1)
#   e2e/kind/run.sh --delete   delete the cluster and the token at the end (or KEEP_CLUSTER=0)
#
# Environment: KIND_NODE_IMAGE overrides the node image of kind-config.yaml.
set -euo pipefail

# The repository root: the docker build context, the chart path and kind's relative extraMounts.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD

cluster=keyward-e2e
image_repo=localhost/keyward/keyward
state=$root/e2e/kind/.kind
# Must be kind-config.yaml's extraMounts hostPath; the node sees it at /var/lib/keyward/softhsm.
token_dir=$state/softhsm
node_token_dir=/var/lib/keyward/softhsm/tokens
kubeconfig=$state/kubeconfig
csi_driver_repo=https://kubernetes-sigs.github.io/secrets-store-csi-driver/charts
csi_driver_chart_version=1.6.0

log() { printf '==> %s\n' "$*"; }
die() { printf 'e2e/kind: %s\n' "$*" >&2; exit 1; }

keep=${KEEP_CLUSTER:-1}
for arg in "$@"; do
  case $arg in
    --delete) keep=0 ;;
    -h | --help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

missing=()
for tool in docker kind kubectl helm node npm; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing on PATH: ${missing[*]} (prerequisites: e2e/kind/README.md)"
docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer (docker info failed)"
[[ -d node_modules ]] || die "node_modules is missing: run npm ci first (the checks are compiled with tsc)"

k8s_version=$(sed -n 's/^KUBERNETES_VERSION=//p' testbed/control-plane/versions.env)
node_image=${KIND_NODE_IMAGE:-$(sed -n 's/^ *image: *//p' e2e/kind/kind-config.yaml)}
[[ $node_image == *":${k8s_version%.*}."* ]] ||
  die "node image $node_image is not Kubernetes ${k8s_version%.*} (KUBERNETES_VERSION=$k8s_version in testbed/control-plane/versions.env)"

# shellcheck disable=SC2317 # called by the EXIT trap, which shellcheck does not follow
delete_all() {
  log "deleting kind cluster $cluster and the token"
  kind delete cluster --name "$cluster" --kubeconfig "$kubeconfig" || true
  # The token files belong to uid 65532: remove them as root in a container.
  if [[ -d $state/softhsm ]] && docker image inspect "$image_repo:kind" >/dev/null 2>&1; then
    docker run --rm -v "$state:/state" --user 0:0 --entrypoint rm "$image_repo:kind" -rf /state/softhsm || true
  fi
  rm -rf "$state" || true
}
if ((keep == 0)); then trap delete_all EXIT; fi

log "npm run build (the checks: dist/e2e/kind/kindChecks.js)"
npm run build --silent

log "docker build -t $image_repo:kind ."
DOCKER_BUILDKIT=1 docker build -t "$image_repo:kind" .
# A tag per image content, so a re-run with changed code rolls the release's pods.
image_tag=kind-$(docker image inspect --format '{{.Id}}' "$image_repo:kind" | sed 's/^sha256://' | cut -c1-12)
docker tag "$image_repo:kind" "$image_repo:$image_tag"

mkdir -p "$state"
chmod 0700 "$state"
if [[ -s $token_dir/user.pin ]]; then
  log "reusing the SoftHSM2 token in $token_dir"
else
  log "keyward hsm init in $token_dir (the image's CLI)"
  mkdir -p "$token_dir"
  # As root in the container: it can write the host directory whatever its owner, give tokens/ to
  # the pods' uid 65532 (mode 0700, as hsm.softhsm.hostPath needs) and the PIN files back to you.
  docker run --rm -v "$token_dir:/token" --user 0:0 --entrypoint /bin/sh "$image_repo:kind" -c '
    set -e
    node /app/dist/cli/keyward.js hsm init --dir /token --label keyward >/dev/null
    chown -R 65532:65532 /token/tokens
    chown "$1" /token/user.pin /token/so.pin /token/softhsm2.conf' sh "$(id -u):$(id -g)"
fi

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "kind cluster $cluster exists"
else
  log "kind create cluster --name $cluster ($node_image)"
  kind create cluster --name "$cluster" --config e2e/kind/kind-config.yaml --image "$node_image" --kubeconfig "$kubeconfig" --wait 180s
fi
kind export kubeconfig --name "$cluster" --kubeconfig "$kubeconfig" >/dev/null
export KUBECONFIG=$kubeconfig
docker exec "$cluster-control-plane" test -d "$node_token_dir" ||
  die "the node has no $node_token_dir: cluster $cluster was not made from e2e/kind/kind-config.yaml (kind delete cluster --name $cluster, then run again)"

log "kind load docker-image $image_repo:$image_tag"
kind load docker-image "$image_repo:$image_tag" --name "$cluster"

# The chart's default linux.providersDir (/var/run/secrets-store-csi-providers) is
# csiProvider.providerDir's default, so neither is set.
log "Secrets Store CSI driver $csi_driver_chart_version (helm, kube-system)"
helm upgrade --install csi-secrets-store secrets-store-csi-driver \
  --repo "$csi_driver_repo" --version "$csi_driver_chart_version" --namespace kube-system \
  --set 'tokenRequests[0].audience=keyward' \
  --set enableSecretRotation=true \
  --set rotationPollInterval=10s \
  --set syncSecret.enabled=true \
  --wait --timeout 5m

log "namespace keyward-system and the PIN Secret keyward-hsm-pin"
kubectl create namespace keyward-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n keyward-system create secret generic keyward-hsm-pin --from-file=pin="$token_dir/user.pin" --dry-run=client -o yaml |
  kubectl apply -f - >/dev/null

log "helm install keyward charts/keyward (image $image_repo:$image_tag)"
helm upgrade --install keyward charts/keyward --namespace keyward-system \
  --set image.repository="$image_repo" \
  --set image.tag="$image_tag" \
  --set image.pullPolicy=Never \
  --set hsm.softhsm.hostPath="$node_token_dir" \
  --set csiProvider.enabled=true \
  --wait --timeout 5m

log "checks (e2e/install/clusterChecks.ts)"
if node dist/e2e/kind/kindChecks.js; then rc=0; else rc=$?; fi

if ((keep)); then
  cat <<EOF
==> cluster $cluster kept:
      export KUBECONFIG=$kubeconfig
    delete it and the token with
      kind delete cluster --name $cluster && docker run --rm -v $state:/state --user 0:0 --entrypoint rm $image_repo:kind -rf /state/softhsm && rm -rf $state
EOF
fi
exit "$rc"
