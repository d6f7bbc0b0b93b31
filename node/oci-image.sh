#!/usr/bin/env bash
# Writes an OCI image archive (the layout `ctr images import` reads) holding
# one static binary, with no shell and nothing else: the same shape as the
# Dockerfile's image, built without a registry or a container engine.
# Prints the image's reference, NAME:TAG, where TAG is the start of the
# manifest's digest, so a new binary gets a new tag (and a Deployment using it
# rolls). The archive is reproducible: the same binary gives the same digest.
#
#   node/oci-image.sh OUT.tar NAME BINARY USER ENTRYPOINT [ARG...]
#   node/oci-image.sh target/image/replika.tar replika.local/replika \
#     target/static/.../replika 65532:65532 /replika run
set -euo pipefail

[ $# -ge 5 ] || { echo "usage: oci-image.sh OUT.tar NAME BINARY USER ENTRYPOINT [ARG...]" >&2; exit 2; }
out=$1 name=$2 binary=$3 user=$4 entrypoint=$5
shift 5

case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) echo "oci-image.sh: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs" "$work/oci/blobs/sha256"
install -m 0755 "$binary" "$work/rootfs/${entrypoint#/}"

# blob FILE MEDIA-TYPE: moves FILE into the layout and prints its descriptor.
blob() {
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$work/oci/blobs/sha256/$digest"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$digest" "$size"
}

json_strings() {
  local first=1
  printf '['
  for s in "$@"; do
    [ $first = 1 ] || printf ','
    first=0
    printf '"%s"' "$s"
  done
  printf ']'
}

tar --create --file "$work/layer.tar" --directory "$work/rootfs" --sort=name \
  --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer=$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)

printf '{"architecture":"%s","os":"linux","config":{"User":"%s","Entrypoint":%s,"Cmd":%s,"Env":["PATH=/"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$arch" "$user" "$(json_strings "$entrypoint")" "$(json_strings "$@")" "$diff_id" >"$work/config.json"
config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
  "$config" "$layer" >"$work/manifest.json"
manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
digest=$(sed 's/.*"sha256:\([0-9a-f]*\)".*/\1/' <<<"$manifest")
ref="$name:${digest:0:12}"

printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
printf '{"schemaVersion":2,"manifests":[%s]}' \
  "${manifest%\}},\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$ref\",\"org.opencontainers.image.ref.name\":\"${digest:0:12}\"}}" \
  >"$work/oci/index.json"

mkdir -p "$(dirname "$out")"
tar --create --file "$out.tmp" --directory "$work/oci" --sort=name \
  --owner=0 --group=0 --numeric-owner --mtime=@0 .
mv "$out.tmp" "$out"
echo "$ref"
