#!/usr/bin/env bash
# Prints the paths of the Prometheus Operator's AlertmanagerConfig and
# ServiceMonitor CRDs at the pinned version (tools/versions.env), from its
# official Go module (downloaded into the Go module cache when missing).
# tests/install.rs installs them to check examples/ and the Helm chart's
# ServiceMonitor against the real schemas.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

need_go
module="github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION"
dir=$(module_dir "$module")
for crd in alertmanagerconfigs servicemonitors; do
  file="$dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml"
  [ -f "$file" ] || { echo "prometheus-operator-crds.sh: $module has no $file" >&2; exit 1; }
  echo "$file"
done
