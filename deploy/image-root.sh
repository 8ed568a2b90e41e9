#!/usr/bin/env bash
# Lays out the era5 image's root filesystem in DIR from BINARY: the one definition of what the
# image holds, used by deploy/build-image.sh (buildah, no daemon) and deploy/Dockerfile.
#   /usr/local/bin/era5                 the binary, stripped
#   /lib, /lib64 ...                    the shared libraries it links (from ldd: libc, libm,
#                                       libgcc_s and the loader), at the paths the loader uses
#   /etc/ssl/certs/ca-certificates.crt  the CA certificates (an s3:// destination's TLS)
#   /etc/passwd, /etc/group             user and group 65532 ("nonroot"), which it runs as
#   /tmp                                empty, sticky (the manifests mount a tmpfs there)
#
#   deploy/image-root.sh BINARY DIR
set -euo pipefail
binary=$1
root=$2
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/era5"
strip "$root/usr/local/bin/era5"
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
echo "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin" >"$root/etc/passwd"
echo "nonroot:x:65532:" >"$root/etc/group"
