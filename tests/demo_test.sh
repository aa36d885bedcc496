#!/usr/bin/env bash
# scripts/demo itself (README, The two commands), on the binaries of this
# build (--bin: nothing installed or built) and a small message count: it
# must deliver every message and print the summary with the rate per hour.
#
#   demo_test.sh REPO_ROOT BIN_DIR [MESSAGES]
set -uo pipefail
root=$1
bin=$2
messages=${3:-2000}
if ! command -v dnsmasq >/dev/null; then
    echo "dnsmasq is not installed (scripts/setup installs it)" >&2
    exit 77
fi
out=$("$root/scripts/demo" --bin "$bin" --messages "$messages" 2>&1)
rc=$?
echo "$out"
fail() {
    echo "FAIL: $*"
    exit 1
}
[ "$rc" -eq 0 ] || fail "scripts/demo exited $rc"
grep -Eq "^sent: $messages rows, $messages delivered, 0 bounced, 0 expired, 0 invalid" <<<"$out" ||
    fail "not every message delivered"
grep -Eq '^time: [0-9.]+ s, [0-9.]+[kMG]? messages/hour delivered' <<<"$out" || fail "no rate per hour"
grep -Eq '^  \{"line":[0-9]+,.*"status":"delivered"' <<<"$out" || fail "no journal lines shown"
# STARTTLS by default: sessions were set up, most of them resumed, none failed.
grep -Eq '^tls: [1-9][0-9]* handshakes, [1-9][0-9]* resumed \([0-9.]+%\), 0 failed' <<<"$out" ||
    fail "the demo did not go over STARTTLS with resumed sessions"
grep -Eq '"tls":"TLSv1\.3' <<<"$out" || fail "the journal lines do not show TLS"
echo "demo ok"
