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

local_plane=false
if { [ -n "${KUBECONFIG:-}" ] || [ -f "$HOME/.kube/config" ]; } && reachable; then
  echo "run.sh: using the cluster of the current kubeconfig ($("$kubectl" config current-context 2>/dev/null))"
  echo "run.sh: admission webhooks stay off: that cluster's API server cannot call this machine;"
  echo "run.sh: only Replikas admitted by webhooks installed there (deploy/) carry a signed author and replicate"
else
  echo "run.sh: no cluster answers in the current kubeconfig; using a local control plane"
  make --no-print-directory control-plane
  export KUBECONFIG="$PWD/.local/kubeconfig"
  echo "run.sh: to use it from another shell: export KUBECONFIG=$KUBECONFIG PATH=$PWD/.local/bin:\$PATH"
  local_plane=true
fi

"$kubectl" apply --server-side -k deploy/base
"$kubectl" wait --for=condition=Established --timeout=60s crd/replikas.replika.prosimcorp.com >/dev/null
cargo build --quiet --bin replika
replika=target/debug/replika

webhook_args=()
if [ "$local_plane" = true ]; then
  # The local API server calls the webhook at 127.0.0.1 with a self-made certificate.
  port=${REPLIKA_WEBHOOK_PORT:-9443}
  certs=.local/webhook
  [ -f "$certs/tls.crt" ] || "$replika" certs --out "$certs" --host 127.0.0.1
  sed -e "s|\${WEBHOOK_NAME}|replika-local|" \
      -e "s|\${WEBHOOK_URL}|https://127.0.0.1:$port|" \
      -e "s|\${CA_BUNDLE}|$(base64 -w0 "$certs/ca.crt")|" \
      webhook-config/local/webhooks.yaml.tmpl | "$kubectl" apply --server-side -f -
  # failurePolicy is Fail: without the operator no Replika could be applied, so
  # the registration goes when the operator stops.
  trap '"$kubectl" delete validatingwebhookconfiguration,mutatingwebhookconfiguration replika-local --ignore-not-found >/dev/null' EXIT
  webhook_args=(--webhook-bind "127.0.0.1:$port" --tls-dir "$certs")
fi

"$replika" run "${webhook_args[@]}" "$@"
