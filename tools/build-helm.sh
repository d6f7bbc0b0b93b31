#!/usr/bin/env bash
# Builds the pinned Helm (tools/versions.env) from its official Go module into
# a cache outside the repository, keyed by version, and prints the binary's
# path. Rebuilds nothing that is already there.
#
#   tools/build-helm.sh                 # build if missing, print the path
#   REPLIKA_CACHE=/some/dir tools/build-helm.sh
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

bin_dir="$tools_cache/helm-v$HELM_VERSION"
helm="$bin_dir/helm"

if [ -x "$helm" ]; then
  echo "$helm"
  exit 0
fi

start_go_build
mkdir -p "$bin_dir"

echo "build-helm.sh: building Helm v$HELM_VERSION (a few minutes cold on 2 cores)" >&2
printf 'module replika.local/helm\n\ngo 1.24\n\nrequire helm.sh/helm/v3 v%s\n' "$HELM_VERSION" >"$work/go.mod"
cd "$work"
# `helm version` reports the pinned version; `.Capabilities.KubeVersion` in
# `helm template` follows the Kubernetes client libraries Helm is built with,
# as in Helm's own release builds.
client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go)   # v0.<minor>.<patch>
minor=${client_go#v0.}
minor=${minor%%.*}
flags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
done
go build -trimpath -ldflags "$flags" -o "$helm.tmp" helm.sh/helm/v3/cmd/helm
mv "$helm.tmp" "$helm"
echo "build-helm.sh: built $helm" >&2
echo "$helm"
