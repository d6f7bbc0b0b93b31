#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from the
# official Go modules into a cache outside the repository, keyed by version.
# Prints the bin directory. Rebuilds nothing that is already there.
#
#   control-plane/build.sh            # build if missing, print the bin dir
#   control-plane/build.sh node       # also kubelet, kube-proxy and kube-scheduler
#                                     # (`make cluster`), from the same module
#   REPLIKA_CACHE=/some/dir build.sh   # choose the cache root
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${REPLIKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/replika}
bin_dir="$cache_root/control-plane/k8s-v$KUBERNETES_VERSION-etcd-v$ETCD_VERSION/bin"
plane=(kube-apiserver kube-controller-manager kubectl)
node=(kubelet kube-proxy kube-scheduler)
case "${1:-}" in
  "") kubernetes=("${plane[@]}") ;;
  node) kubernetes=("${plane[@]}" "${node[@]}") ;;
  *) echo "usage: build.sh [node]" >&2; exit 2 ;;
esac
binaries=(etcd "${kubernetes[@]}")

missing=0
for b in "${binaries[@]}"; do [ -x "$bin_dir/$b" ] || missing=1; done
if [ "$missing" = 0 ]; then
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: Go is required to build the control plane" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$bin_dir"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { echo "build.sh: $*" >&2; }

# build_kubernetes BINARY...: builds those commands of k8s.io/kubernetes.
build_kubernetes() {
  local mod="$work/kubernetes" minor="${KUBERNETES_VERSION#*.}"
  minor="${minor%%.*}"
  mkdir -p "$mod"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  {
    echo "module replika.local/control-plane"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes v$KUBERNETES_VERSION"
    echo
    # Every staging module that kubernetes replaces with a local path is
    # published under the matching v0.<minor>.<patch> tag.
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$gomod" |
      while read -r staged; do echo "replace $staged => $staged v0.${KUBERNETES_VERSION#*.}"; done
  } >"$mod/go.mod"
  local v=k8s.io/component-base/version c=k8s.io/client-go/pkg/version flags=""
  for pkg in $v $c; do
    flags+=" -X $pkg.gitVersion=v$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "building $* of Kubernetes v$KUBERNETES_VERSION (a cold build takes 5-10 minutes on 2 cores)"
  (cd "$mod" && go build -trimpath -ldflags "-s -w$flags" -o "$bin_dir/" \
    "${@/#/k8s.io/kubernetes/cmd/}")
}

build_etcd() {
  local mod="$work/etcd"
  mkdir -p "$mod"
  printf 'module replika.local/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" >"$mod/go.mod"
  log "building etcd v$ETCD_VERSION"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd" go.etcd.io/etcd/server/v3)
}

[ -x "$bin_dir/etcd" ] || build_etcd
# Only the missing ones: the node's binaries join an existing plane's.
absent=()
for b in "${kubernetes[@]}"; do [ -x "$bin_dir/$b" ] || absent+=("$b"); done
[ ${#absent[@]} = 0 ] || build_kubernetes "${absent[@]}"
log "built into $bin_dir"
echo "$bin_dir"
