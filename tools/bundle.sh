#!/usr/bin/env bash
# Renders one install bundle per overlay of deploy/overlays with the pinned
# kubectl's Kustomize: OUT/<overlay>/bundle.yaml (OUT defaults to
# target/bundle). `make bundle` runs it; tests/install.rs applies what it
# renders. The bundles are release artifacts, not committed.
#
#   tools/bundle.sh [OUT]
#   KUBECTL=/path/to/kubectl tools/bundle.sh    # skip control-plane/build.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/bundle}
kubectl=${KUBECTL:-$("$repo/control-plane/build.sh")/kubectl}

for overlay in "$repo"/deploy/overlays/*/; do
  name=$(basename "$overlay")
  mkdir -p "$out/$name"
  {
    echo "# Replika install bundle, certificates: $name."
    echo "# Rendered from deploy/overlays/$name by tools/bundle.sh; apply with"
    echo "#   kubectl apply --server-side -f bundle.yaml"
    if [ "$name" = cert-manager ]; then
      echo "# cert-manager (its CRDs, controller and cainjector) must be installed first."
    fi
    "$kubectl" kustomize "$overlay"
  } >"$out/$name/bundle.yaml.tmp"
  mv "$out/$name/bundle.yaml.tmp" "$out/$name/bundle.yaml"
  echo "$out/$name/bundle.yaml"
done
