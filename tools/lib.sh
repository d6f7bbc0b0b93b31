# Sourced by the scripts of tools/ (not run): the pinned versions, the cache
# they build into, and Go module helpers.
# shellcheck shell=bash

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$tools_dir/versions.env"

# Outside the repository, keyed by version below it; shared with control-plane/build.sh.
tools_cache=${REPLIKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/replika}/tools

# Fails with the script's name unless Go is installed.
need_go() {
  command -v go >/dev/null || { echo "$(basename "$0"): Go is required" >&2; exit 1; }
}

# Prints the directory of MODULE@VERSION in the Go module cache, downloading it if needed.
module_dir() {
  GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p'
}

# Prepares a Go build outside any module of the repository: sets `work` to a
# fresh directory removed on exit, and the environment of a static,
# reproducible build with the installed toolchain.
start_go_build() {
  need_go
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: `work` is global and may be reused
  trap "rm -rf '$work'" EXIT
  export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
}
