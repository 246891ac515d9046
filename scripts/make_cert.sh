#!/usr/bin/env bash
# Makes a local certificate authority and a certificate for localhost and 127.0.0.1 signed by
# it, for trying HTTPS on this machine:
#
#   scripts/make_cert.sh [DIR]      (default: certs/; existing files are kept)
#
# Writes DIR/ca.pem (give it to clients: curl --cacert DIR/ca.pem), DIR/ca.key, and
# DIR/proxy.pem + DIR/proxy.key (the [tls] cert and key). certs/ is in .gitignore: a private key
# never belongs in a commit. Needs openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-certs}
command -v openssl >/dev/null || { echo "make_cert.sh: openssl is missing (apt-get install openssl)" >&2; exit 2; }
mkdir -p "$dir"
umask 077
if [ -s "$dir/proxy.pem" ] && [ -s "$dir/proxy.key" ]; then
    echo "kept the existing $dir/proxy.pem and $dir/proxy.key (delete them to make new ones)"
else
    if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
            -subj "/CN=lbproxy local CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    fi
    ext=$(mktemp)
    trap 'rm -f "$ext" "$dir/proxy.csr"' EXIT
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
        -keyout "$dir/proxy.key" -out "$dir/proxy.csr" 2>/dev/null
    openssl x509 -req -in "$dir/proxy.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 825 -extfile "$ext" -out "$dir/proxy.pem" 2>/dev/null
    rm -f "$dir/ca.srl"
    echo "made $dir/ca.pem (the CA), $dir/proxy.pem and $dir/proxy.key (for localhost and 127.0.0.1)"
fi
cat <<HINT
Start the proxy with TLS (http mode):
  ./proxy_server --mode http --tls-cert $dir/proxy.pem --tls-key $dir/proxy.key
and ask it over HTTPS, trusting the local CA:
  curl --cacert $dir/ca.pem https://localhost:8080/
HINT
