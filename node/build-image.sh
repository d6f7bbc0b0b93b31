#!/usr/bin/env bash
# `make image`: the operator's image, equivalent to the Dockerfile's (which
# stays the release recipe) and built without a container engine: the
# `replika` binary linked statically (glibc with crt-static: the musl target
# may not be installable here), as /replika, user 65532, entrypoint
# `/replika run`, nothing else — no shell. Writes OUT/replika.tar (an OCI
# archive for `ctr images import`) and OUT/replika.ref (its NAME:TAG), and
# prints the reference.
#
#   node/build-image.sh [OUT]        # OUT defaults to target/image
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/image}
host=$(rustc -vV | sed -n 's/^host: //p')
# A target dir of its own: other RUSTFLAGS would rebuild target/release.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
  --package replika --bin replika --target "$host" --target-dir "$repo/target/static" >&2
binary="$repo/target/static/$host/release/replika"
# ldd lists a dynamic executable's libraries as `name => path`.
if ldd "$binary" 2>&1 | grep -q '=>'; then
  echo "build-image.sh: $binary is not statically linked" >&2
  exit 1
fi
mkdir -p "$out"
ref=$("$repo/node/oci-image.sh" "$out/replika.tar" replika.local/replika "$binary" 65532:65532 /replika run)
echo "$ref" >"$out/replika.ref"
echo "$ref"
