#!/usr/bin/env bash
# `make run`: runs the operator in the foreground against the cluster of the
# current kubeconfig when one answers, otherwise against a local control plane
# (started, or reused, by `make control-plane`). Installs the CRD and RBAC of
# deploy/base first. Ctrl-C stops the operator; `make down` stops a local plane.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=$(control-plane/build.sh)
kubectl="$bin_dir/kubectl"

reachable() { "$kubectl" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; }

if { [ -n "${KUBECONFIG:-}" ] || [ -f "$HOME/.kube/config" ]; } && reachable; then
  echo "run.sh: using the cluster of the current kubeconfig ($("$kubectl" config current-context 2>/dev/null))"
else
  echo "run.sh: no cluster answers in the current kubeconfig; using a local control plane"
  make --no-print-directory control-plane
  export KUBECONFIG="$PWD/.local/kubeconfig"
  echo "run.sh: to use it from another shell: export KUBECONFIG=$KUBECONFIG PATH=$PWD/.local/bin:\$PATH"
fi

"$kubectl" apply --server-side -k deploy/base
"$kubectl" wait --for=condition=Established --timeout=60s crd/replikas.replika.prosimcorp.com >/dev/null
exec cargo run --quiet --bin replika -- run "$@"
