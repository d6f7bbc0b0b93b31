#!/usr/bin/env bash
# Builds cert-manager's controller loops and CA injector at the pinned version
# (tools/versions.env) from its official Go module, with the small mains in
# tools/cert-manager/ (cert-manager's own binaries are not on the module
# proxy), into a cache outside the repository keyed by version and by those
# sources. Prints the bin directory (controller, cainjector). Rebuilds nothing
# that is already there. Used by the cert-manager end-to-end test.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

sources="$tools_dir/cert-manager"
digest=$(cat "$sources"/*/main.go | sha256sum | cut -c1-12)
bin_dir="$tools_cache/cert-manager-v$CERT_MANAGER_VERSION/bin-$digest"

if [ -x "$bin_dir/controller" ] && [ -x "$bin_dir/cainjector" ]; then
  echo "$bin_dir"
  exit 0
fi

start_go_build
mkdir -p "$bin_dir"

echo "build-cert-manager.sh: building cert-manager v$CERT_MANAGER_VERSION (several minutes cold on 2 cores)" >&2
cp -r "$sources/controller" "$sources/cainjector" "$work/"
printf 'module replika.local/cert-manager\n\ngo 1.26\n\nrequire github.com/cert-manager/cert-manager v%s\n' \
  "$CERT_MANAGER_VERSION" >"$work/go.mod"
cd "$work"
for cmd in controller cainjector; do
  go build -trimpath -ldflags "-s -w" -o "$bin_dir/$cmd.tmp" "./$cmd"
  mv "$bin_dir/$cmd.tmp" "$bin_dir/$cmd"
done
echo "build-cert-manager.sh: built $bin_dir" >&2
echo "$bin_dir"
