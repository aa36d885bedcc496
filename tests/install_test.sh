#!/usr/bin/env bash
# Installs the library into a temporary prefix and builds a consumer project
# against it with find_package(mxpress).
set -euo pipefail
src=$1
build=$2
tmp=$(mktemp -d /tmp/mxpress-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
test -f "$tmp/prefix/include/mxpress/mail/address.hpp"
cmake -S "$src/tests/install_consumer" -B "$tmp/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" >/dev/null
"$tmp/build/consumer"
