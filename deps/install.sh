#!/bin/sh
# Install the Debian packages rivetd builds, tests and runs with, only those that are missing.
set -eu
# Usage: deps/install.sh [bench]   ("bench" adds nginx, for the comparison in make bench)
pkgs="build-essential pkg-config libuv1-dev libcurl4-openssl-dev libcjson-dev libmbedtls-dev
libhiredis-dev libcmocka-dev node-llhttp redis-server python3 wrk curl procps systemd chromium
clang libclang-rt-14-dev clang-format caddy"
if [ "${1:-}" = bench ]; then
    pkgs="$pkgs nginx-light"
fi
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
