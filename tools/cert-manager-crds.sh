#!/usr/bin/env bash
# Prints the path of a file holding cert-manager's CustomResourceDefinitions
# at the pinned version (tools/versions.env), taken from cert-manager's
# official Go module and rendered the way its releases render them: from the
# Helm chart in the module (deploy/charts/cert-manager, crds.enabled=true),
# with the chart's version set to the release's as its release tooling does.
# (The module's deploy/crds/ holds the same schemas, but its README warns they
# are for reference only.) Cached outside the repository, keyed by version;
# needs Go and the pinned Helm (tools/build-helm.sh, built when missing).
#
#   tools/cert-manager-crds.sh          # render if missing, print the path
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

out_dir="$tools_cache/cert-manager-v$CERT_MANAGER_VERSION"
crds="$out_dir/crds.yaml"

if [ -s "$crds" ]; then
  echo "$crds"
  exit 0
fi

need_go
helm=${REPLIKA_HELM:-$("$tools_dir/build-helm.sh")}
module="github.com/cert-manager/cert-manager@v$CERT_MANAGER_VERSION"
dir=$(module_dir "$module")
[ -d "$dir/deploy/charts/cert-manager" ] || {
  echo "cert-manager-crds.sh: no chart in $module (looked in $dir/deploy/charts/cert-manager)" >&2
  exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The module cache is read-only; the chart is copied to set its version.
cp -r "$dir/deploy/charts/cert-manager" "$work/chart"
chmod -R u+w "$work/chart"
sed -i -e "s/^version: .*/version: v$CERT_MANAGER_VERSION/" \
  -e "s/^appVersion: .*/appVersion: v$CERT_MANAGER_VERSION/" "$work/chart/Chart.yaml"

show_only=()
for template in "$work"/chart/templates/crd-*.yaml; do
  show_only+=(--show-only "templates/$(basename "$template")")
done
[ ${#show_only[@]} -gt 0 ] || { echo "cert-manager-crds.sh: no CRD templates in the chart" >&2; exit 1; }

mkdir -p "$out_dir"
"$helm" template cert-manager "$work/chart" --namespace cert-manager \
  --set crds.enabled=true "${show_only[@]}" >"$crds.tmp"
grep -q '^kind: CustomResourceDefinition' "$crds.tmp" || {
  echo "cert-manager-crds.sh: rendering gave no CRDs" >&2
  exit 1
}
mv "$crds.tmp" "$crds"
echo "cert-manager-crds.sh: rendered $crds" >&2
echo "$crds"
