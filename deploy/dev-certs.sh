#!/usr/bin/env bash
# Makes a throwaway CA and the certificates of a small era5 cluster with openssl, for trying
# TLS on one machine or in the dev overlay without cert-manager. Not for production: the CA
# key sits next to the certificates, and nothing here is ever rotated.
#
#   deploy/dev-certs.sh DIR [WORKER...]      (workers default to: w1 w2)
#
# Writes into DIR:
#   ca.crt, ca.key                  the CA (every --tls-ca, and --redis-ca)
#   coordinator.crt/.key            server certificate: DNS localhost, coordinator,
#                                   coordinator.era5-dev.svc, redis; IP 127.0.0.1
#   operator.crt/.key               client: spiffe://era5.dev/era5/operator/admin
#   worker-NAME.crt/.key            client: spiffe://era5.dev/era5/worker/NAME
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 DIR [WORKER...]" >&2
    exit 2
fi
dir=$1
shift
workers=("$@")
[ ${#workers[@]} -gt 0 ] || workers=(w1 w2)
trust_domain=${ERA5_TRUST_DOMAIN:-era5.dev}
days=${ERA5_CERT_DAYS:-30}

mkdir -p "$dir"
cd "$dir"
umask 077

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=era5 dev CA" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# issue NAME SUBJECT_ALT_NAMES EXTENDED_KEY_USAGE
issue() {
    local name=$1 sans=$2 usage=$3
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
        -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' \
        "$sans" "$usage" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days "$days" -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

issue coordinator \
    "DNS:localhost,DNS:coordinator,DNS:coordinator.era5-dev.svc,DNS:redis,DNS:redis.era5-dev.svc,IP:127.0.0.1" \
    serverAuth
issue operator "URI:spiffe://$trust_domain/era5/operator/admin" clientAuth
for worker in "${workers[@]}"; do
    issue "worker-$worker" "URI:spiffe://$trust_domain/era5/worker/$worker" clientAuth
done
rm -f ca.srl
chmod 644 ./*.crt
echo "dev-certs: CA, coordinator, operator and ${#workers[@]} worker certificates in $dir"
