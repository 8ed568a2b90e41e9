#!/usr/bin/env bash
# Builds the era5 image without a Docker daemon and without pulling any base image (issue 23
# §2): FROM scratch with buildah, holding only what deploy/image-root.sh lays out (the binary,
# its shared libraries, the CA certificates, user 65532), as deploy/Dockerfile does for those
# who have Docker.
#
#   deploy/build-image.sh [BINARY [TAG]]
#     BINARY  default: target/release/era5 (cargo build --release --locked -p cli)
#     TAG     default: the image the kustomize base names (deploy/base/kustomization.yaml),
#             ghcr.io/era5-mirror/era5:<cli version>
#
# Storage is buildah's (vfs driver unless STORAGE_DRIVER says otherwise, so it works without
# overlay support); prints the image's size (its one layer, uncompressed) in bytes last.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${1:-${CARGO_TARGET_DIR:-target}/release/era5}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' cli/Cargo.toml | head -1)
tag="${2:-ghcr.io/era5-mirror/era5:$version}"
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"

[ -x "$binary" ] || {
    echo "build-image: no binary at $binary (cargo build --release --locked -p cli)" >&2
    exit 1
}
command -v buildah >/dev/null 2>&1 || {
    echo "build-image: buildah is missing (apt-get install buildah)" >&2
    exit 1
}

root=$(mktemp -d)
ctr=""
cleanup() {
    [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$root"
}
trap cleanup EXIT

deploy/image-root.sh "$binary" "$root"

ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$root" / >/dev/null
buildah config \
    --user 65532:65532 \
    --entrypoint '["/usr/local/bin/era5"]' \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label org.opencontainers.image.title=era5-mirror \
    --label "org.opencontainers.image.version=$version" \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
ctr=""
# What the image holds, uncompressed: its one layer.
size=$(du -sb "$root" | cut -f1)
echo "build-image: $tag built, $size bytes"
echo "$size"
