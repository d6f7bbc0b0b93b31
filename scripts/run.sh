#!/usr/bin/env bash
# `make run`: runs the operator in the foreground against the cluster of the
# current kubeconfig when one answers, otherwise against a local control plane
# (started, or reused, by `make control-plane`). Installs the CRD and RBAC of
# deploy/base first. Ctrl-C stops the operator; `make down` stops a local plane.
#
# How Replikas get an author the operator replicates for (README, "Two commands"):
# - the project's local plane (whatever kubeconfig points at it): this process
#   serves the admission webhooks on 127.0.0.1 and registers them;
# - any other cluster: its API server cannot be assumed to reach this machine,
#   so the operator runs in development mode (--authorize-unsigned-as-self):
#   Replikas without an author replicate as your own kubeconfig user.
#
# Environment: LOCAL_DIR (default .local), REPLIKA_WEBHOOK_PORT (default 9443),
# REPLIKA_BIN (a replika binary to run instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."

local_dir=${LOCAL_DIR:-.local}
case $local_dir in /*) ;; *) local_dir="$PWD/$local_dir" ;; esac
bin_dir=$(control-plane/build.sh)
kubectl="$bin_dir/kubectl"

reachable() { "$kubectl" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; }
# The API server address of a kubeconfig's current context ($1; empty: the current kubeconfig).
server_of() {
  "$kubectl" ${1:+--kubeconfig "$1"} config view --minify -o jsonpath='{.clusters[0].cluster.server}' 2>/dev/null
}

if { [ -n "${KUBECONFIG:-}" ] || [ -f "$HOME/.kube/config" ]; } && reachable; then
  server=$(server_of)
  if [ -f "$local_dir/kubeconfig" ] && [ "$server" = "$(server_of "$local_dir/kubeconfig")" ]; then
    echo "run.sh: the current kubeconfig points at this project's local control plane ($server)"
    local_plane=true
  else
    echo "run.sh: using the cluster of the current kubeconfig (context $("$kubectl" config current-context 2>/dev/null), $server)"
    local_plane=false
  fi
else
  echo "run.sh: no cluster answers in the current kubeconfig; using a local control plane"
  make --no-print-directory control-plane LOCAL_DIR="$local_dir"
  export KUBECONFIG="$local_dir/kubeconfig"
  echo "run.sh: to use it from another shell: export KUBECONFIG=$KUBECONFIG PATH=$local_dir/bin:\$PATH"
  local_plane=true
fi

"$kubectl" apply --server-side -k deploy/base
# kubectl wait fails at once, instead of waiting, while the new CRD has no
# status conditions yet; ask again until a minute has passed, then once more
# to show why (set -e stops the script there).
established() {
  "$kubectl" wait --for=condition=Established --timeout=5s crd/replikas.replika.prosimcorp.com >/dev/null
}
deadline=$((SECONDS + 60))
until established 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then established; fi
  sleep 1
done
replika=${REPLIKA_BIN:-}
if [ -z "$replika" ]; then
  cargo build --quiet --bin replika
  replika=target/debug/replika
fi

admission_args=()
if [ "$local_plane" = true ]; then
  echo "run.sh: admission: the local API server calls this operator's webhooks on 127.0.0.1; Replikas applied now get a signed author"
  port=${REPLIKA_WEBHOOK_PORT:-9443}
  certs=$local_dir/webhook
  [ -f "$certs/tls.crt" ] || "$replika" certs --out "$certs" --host 127.0.0.1
  sed -e "s|\${WEBHOOK_NAME}|replika-local|" \
      -e "s|\${WEBHOOK_URL}|https://127.0.0.1:$port|" \
      -e "s|\${CA_BUNDLE}|$(base64 -w0 "$certs/ca.crt")|" \
      webhook-config/local/webhooks.yaml.tmpl | "$kubectl" apply --server-side -f -
  # failurePolicy is Fail: without the operator no Replika could be applied, so
  # the registration goes when the operator stops.
  trap '"$kubectl" delete validatingwebhookconfiguration,mutatingwebhookconfiguration replika-local --ignore-not-found >/dev/null' EXIT
  admission_args=(--webhook-bind "127.0.0.1:$port" --tls-dir "$certs")
else
  echo "run.sh: admission: DEVELOPMENT MODE: that cluster's API server cannot be assumed to reach this machine, so no webhooks;"
  echo "run.sh: Replikas without a signed author replicate as your kubeconfig user, within its access (install Replika in the cluster for signed authors: docs/install.md)"
  admission_args=(--authorize-unsigned-as-self)
fi

"$replika" run "${admission_args[@]}" "$@"
