#!/usr/bin/env bash
# The runner as a user meets it: each bad input gives exit status 2 and a
# message naming the file (and line); a bad row is an `invalid` journal line;
# a dry run journals every row; --resume skips rows already final.
set -uo pipefail
mx=$(realpath "$1")
tmp=$(mktemp -d /tmp/mxpress-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
failures=0
passed=0

# expect NAME STATUS PATTERN -- command...: runs it, checks exit status and
# that stderr+stdout matches the extended regex PATTERN.
expect() {
    local name=$1 want=$2 pattern=$3
    shift 4
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" -ne "$want" ] || ! grep -Eq -- "$pattern" <<<"$out"; then
        echo "FAIL $name: exit $rc (want $want), output:"
        echo "$out" | head -20 | sed 's/^/    /'
        echo "    (wanted /$pattern/)"
        failures=$((failures + 1))
    else
        passed=$((passed + 1))
    fi
}

printf 'email,name\na@x.org,Ann\n' >good.csv
printf 'Subject: hi {{name}}\n\nHello {{name}}\n' >good.eml
send=("$mx" send --dry-run --from bounce@sender.example --progress off)

expect help 0 'check-config +Validate' -- "$mx" --help
expect send_help 0 '--recipients' -- "$mx" send --help
expect no_subcommand 2 'A subcommand is required' -- "$mx"
expect missing_option 2 '--from is required' -- "$mx" send --dry-run --recipients good.csv --message good.eml
expect bad_from 2 "--from 'nope': address has no '@'" -- "$mx" send --dry-run --recipients good.csv --message good.eml --from nope

expect missing_recipients 2 'missing.csv: cannot open recipients file: No such file or directory' -- \
    "${send[@]}" --recipients missing.csv --message good.eml
# An unreadable template. Root reads any file whatever its mode, so as root
# (CI) this one call runs as nobody, in a folder nobody may enter.
mkdir perm
cp good.csv perm/good.csv
cp good.eml perm/secret.eml
chmod 000 perm/secret.eml
as_unprivileged=()
if [ "$(id -u)" -eq 0 ]; then
    chmod 755 "$tmp" perm
    as_unprivileged=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
fi
expect unreadable_template 2 'secret.eml: cannot open message template: Permission denied' -- \
    "${as_unprivileged[@]}" "${send[@]}" --recipients perm/good.csv --message perm/secret.eml
expect missing_template 2 'missing.eml: cannot open message template' -- \
    "${send[@]}" --recipients good.csv --message missing.eml
expect recipients_is_dir 2 'recipients file is a directory' -- "${send[@]}" --recipients "$tmp" --message good.eml
expect bad_journal_dir 2 'nodir/j.jsonl: cannot open journal' -- \
    "${send[@]}" --recipients good.csv --message good.eml --journal nodir/j.jsonl
# A full disk is a run failure (exit 1 naming the file), not a usage error.
expect full_disk_journal 1 '/dev/full: cannot write journal: No space left' -- \
    "${send[@]}" --recipients good.csv --message good.eml --journal /dev/full

: >empty.csv
expect empty_file 2 'empty.csv: file is empty' -- "${send[@]}" --recipients empty.csv --message good.eml
printf 'name,city\nAnn,Oslo\n' >noemail.csv
expect no_email_column 2 "noemail.csv:1: header row has no 'email' column" -- \
    "${send[@]}" --recipients noemail.csv --message good.eml
printf 'Subject: hi\n\nHello {{nmae}}\n' >unknown.eml
expect unknown_field 2 "unknown.eml:3: unknown merge field '\{\{nmae\}\}'" -- \
    "${send[@]}" --recipients good.csv --message unknown.eml
printf 'Subject: hi\nHello there\n' >noblank.eml
expect no_blank_line 2 'noblank.eml:2: expected a header line' -- \
    "${send[@]}" --recipients good.csv --message noblank.eml
printf '[defaults]\nconections_max = 3\n' >typo.toml
expect config_unknown_key 2 "typo.toml:2: unknown key 'conections_max'" -- \
    "${send[@]}" --recipients good.csv --message good.eml --config typo.toml
printf '[defaults]\nconnections_max = "ten"\n' >type.toml
expect config_wrong_type 2 'type.toml:2: \[defaults\] connections_max must be an integer' -- \
    "$mx" check-config type.toml
expect check_config_ok 0 'connections_max = 10' -- "$mx" check-config /dev/null
printf '[timeouts]\ngreeting = "500ms"\n' >ms.toml
expect check_config_ms 0 'greeting = "500ms"' -- "$mx" check-config ms.toml
printf '[defaults]\nmax_age = "1000000d"\n' >absurd.toml
expect check_config_absurd 2 'absurd.toml:2: \[defaults\] max_age = "1000000d" is out of range \(1ms..365d\)' -- \
    "$mx" check-config absurd.toml
mkdir -p confdir
expect config_is_dir 2 'confdir: cannot read configuration: it is a directory' -- \
    "${send[@]}" --recipients good.csv --message good.eml --config confdir
expect check_config_keys 0 '\| `\[defaults\] pending_max` \| integer' -- "$mx" check-config --keys
printf '[domain."slow.test"]\nmax_message_rate = "5/s"\n' > shaped.toml
expect check_config_domain 0 'max_message_rate = "5/s"  # per domain, from \[domain."slow.test"\]' -- \
    "$mx" check-config shaped.toml --domain SLOW.test --mx mx.slow.test
expect check_config_mx_alone 2 '--mx needs --domain' -- "$mx" check-config shaped.toml --mx mx.slow.test

# Bad rows: each becomes an invalid journal line, the run still succeeds.
{
    printf 'email,name\n'
    printf 'ok1@x.org,One\n'
    printf 'short\n'
    printf 'too@x.org,many,fields\n'
    printf 'nul@x.org,a\0b\n'
    printf 'not-an-address,X\n'
    printf 'ok2@x.org,"Two\nLines"\n'
    printf 'big@x.org,'; head -c 1100000 /dev/zero | tr '\0' 'z'; printf '\n'
    printf 'ok3@x.org,Three\n'
    printf 'unterminated@x.org,"open'
} >bad.csv
expect bad_rows 0 'dry run: 9 rows, 3 valid, 6 invalid' -- \
    "${send[@]}" --recipients bad.csv --message good.eml --journal bad.jsonl
check_journal() {
    /usr/bin/python3 - "$@" <<'PY'
import json, sys
path = sys.argv[1]
want = dict(x.split('=', 1) for x in sys.argv[2:])
got = {}
for l in open(path, encoding='utf-8'):
    o = json.loads(l)
    if 'mxpress_journal' in o:
        continue
    got[str(o['line'])] = o['status']
    for k in ('line', 'email', 'status', 'code', 'enhanced', 'reply', 'mx', 'attempts'):
        assert k in o, (k, o)
if got != want:
    print('journal mismatch:', got, 'wanted', want)
    sys.exit(1)
print('journal ok')
PY
}
expect bad_rows_journal 0 'journal ok' -- check_journal bad.jsonl 2=dry-run 3=invalid 4=invalid 5=invalid \
    6=invalid 7=dry-run 9=invalid 10=dry-run 11=invalid
expect bad_rows_reasons 0 '"line":3.*row has 1 field, header has 2' -- cat bad.jsonl
expect bad_rows_nul 0 '"line":5.*NUL byte in row' -- cat bad.jsonl
expect bad_rows_big 0 '"line":9.*row too long' -- cat bad.jsonl

# Default journal beside the recipients file; a second dry run replaces it.
expect default_journal 0 'journal: good.dry-run.jsonl' -- "${send[@]}" --recipients good.csv --message good.eml
expect default_journal_again 0 'dry run: 1 rows, 1 valid' -- "${send[@]}" --recipients good.csv --message good.eml
expect default_journal_lines 0 '^1 ' -- wc -l good.dry-run.jsonl

# A dry run never overwrites a journal with delivery outcomes.
printf '{"line":2,"email":"a@x.org","status":"delivered","code":250,"enhanced":"","reply":"","mx":"","attempts":1}\n' >real.jsonl
expect protect_real_journal 2 'real.jsonl: journal holds 1 delivery outcomes' -- \
    "${send[@]}" --recipients good.csv --message good.eml --journal real.jsonl

# --resume skips rows whose outcome is final.
printf 'email,name\na@x.org,A\nb@x.org,B\nc@x.org,C\n' >three.csv
printf '{"line":3,"email":"b@x.org","status":"delivered","code":250,"enhanced":"","reply":"","mx":"","attempts":1}\n' >resume.jsonl
expect resume 0 'dry run: 3 rows, 2 valid, 0 invalid, 1 already final' -- \
    "${send[@]}" --recipients three.csv --message good.eml --journal resume.jsonl --resume
expect resume_journal 0 'journal ok' -- check_journal resume.jsonl 2=dry-run 3=delivered 4=dry-run

# Summary JSON.
expect summary_json 0 '"valid":3' -- bash -c "'$mx' send --dry-run --from b@s.example --progress off \
    --recipients three.csv --message good.eml --journal s.jsonl --summary-json s.json >/dev/null && cat s.json"

# render: exact bytes for one recipient; errors for the header line and bad rows.
expect render 0 '^Subject: hi Ann' -- "$mx" render --recipients good.csv --message good.eml --line 2
expect render_crlf 0 '^1$' -- bash -c "'$mx' render --recipients good.csv --message good.eml --line 2 | grep -c \$'Hello Ann\r'"
expect render_header_line 2 'no recipient row starts at line 1' -- \
    "$mx" render --recipients good.csv --message good.eml --line 1
expect render_invalid_row 1 'bad.csv:3: invalid row: row has 1 field' -- \
    "$mx" render --recipients bad.csv --message good.eml --line 3

# A real run refuses to overwrite a journal without --resume. (Only loopback:
# --route sends everything to a closed port on 127.0.0.1, no DNS is asked.)
printf '[defaults]\nretry_initial = "100ms"\nretry_max = "200ms"\nmax_age = "1s"\nconnect_timeout = "1s"\n' >short.toml
route=(--route '*=127.0.0.1:1' --config short.toml --progress off)
expect send_journal_exists 2 'real.jsonl: journal already holds outcomes: pass --resume' -- \
    "$mx" send --recipients good.csv --message good.eml --from b@s.example --journal real.jsonl "${route[@]}"
expect send_refused_port_expires 0 '0 delivered, 0 bounced, 1 expired' -- \
    "$mx" send --recipients good.csv --message good.eml --from b@s.example --journal refused.jsonl "${route[@]}"
expect send_refused_journal 0 '"status":"expired".*Connection refused' -- cat refused.jsonl

# The summary (README, Usage): the most frequent failure replies per domain,
# each domain on its own line with its count, in the text and in JSON.
printf 'email,name\na@x.org,A\nb@x.org,B\nc@y.org,C\n' >two.csv
expect failure_summary 0 '0 delivered, 0 bounced, 3 expired' -- bash -c "'$mx' send --recipients two.csv \
    --message good.eml --from b@s.example --journal two.jsonl --summary-json two.json --route '*=127.0.0.1:1' \
    --config short.toml --progress off >two.out 2>&1; rc=\$?; cat two.out; exit \$rc"
expect failure_summary_x 0 '^  2 x x\.org: .*Connection refused' -- cat two.out
expect failure_summary_y 0 '^  1 x y\.org: .*Connection refused' -- cat two.out
expect failure_summary_json 0 '^ok$' -- /usr/bin/python3 -c "
import json
s = json.load(open('two.json'))
got = sorted((f['domain'], f['count'], 'Connection refused' in f['reply']) for f in s['top_failures'])
print('ok' if got == [('x.org', 2, True), ('y.org', 1, True)] else got)"

# Default --threads (README, Usage): the number of cores.
cores=$(getconf _NPROCESSORS_ONLN)
expect default_threads 0 "MB, $cores threads$" -- \
    "$mx" send --recipients good.csv --message good.eml --from b@s.example --journal threads.jsonl "${route[@]}"

# --progress auto|on|off (README, Usage): live progress on stderr; `auto`
# only when stderr is a terminal. Each run lasts at least max_age (700 ms):
# on a terminal the line is redrawn every 250 ms while the shards work; on a
# pipe (`on`) a plain line comes every 5 s and once at the end.
printf '[defaults]\nretry_initial = "100ms"\nretry_max = "100ms"\nmax_age = "700ms"\n' >progress.toml
progress_run() {
    rm -f progress.jsonl
    "$mx" send --recipients good.csv --message good.eml --from b@s.example --journal progress.jsonl \
        --route '*=127.0.0.1:1' --config progress.toml "$@"
}
# stderr of a command on a pseudo-terminal (carriage returns as newlines).
on_tty() {
    /usr/bin/python3 - "$@" <<'PY'
import os, pty, subprocess, sys
master, slave = pty.openpty()
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
os.close(slave)
out = b""
while True:
    try:
        chunk = os.read(master, 4096)
    except OSError:  # EIO: the child closed its end
        break
    if not chunk:
        break
    out += chunk
sys.stdout.write(out.decode("utf-8", "replace").replace("\r", "\n"))
sys.exit(p.wait())
PY
}
has_progress() { if grep -q '[0-9]/h'; then echo progress; else echo no progress; fi; }
export -f progress_run on_tty has_progress
export mx
expect progress_on_pipe 0 '^progress$' -- bash -c 'progress_run --progress on 2>&1 >/dev/null | has_progress'
expect progress_on_line 0 '^100%  1 / 1  0/h  ETA 0s  delivered 0  deferred [0-9]+  failed 1  in flight 0$' -- \
    bash -c 'progress_run --progress on 2>&1 >/dev/null'
# A plain line carries no carriage return and no escape code.
expect progress_on_plain 0 '^plain$' -- \
    bash -c 'progress_run --progress on 2>&1 >/dev/null | LC_ALL=C grep -q "[[:cntrl:]]" && echo escapes || echo plain'
expect progress_auto_pipe 0 '^no progress$' -- bash -c 'progress_run --progress auto 2>&1 >/dev/null | has_progress'
expect progress_default_pipe 0 '^no progress$' -- bash -c 'progress_run 2>&1 >/dev/null | has_progress'
expect progress_auto_tty 0 '^progress$' -- bash -c 'on_tty bash -c "progress_run --progress auto" | has_progress'
# On a terminal: the bar and the percentage, redrawn in place (\r, ESC [K).
expect progress_auto_tty_bar 0 '\[K\[[=>.]+\] +[0-9]+%  [01] / 1  0/h  ETA ' -- \
    bash -c 'on_tty bash -c "progress_run --progress auto"'
expect progress_off_tty 0 '^no progress$' -- bash -c 'on_tty bash -c "progress_run --progress off" | has_progress'

expect bad_route 2 "--route 'x.org': expected DOMAIN=HOST" -- \
    "$mx" send --recipients good.csv --message good.eml --from b@s.example --route x.org
expect bad_dns 2 "--dns 'not an ip': 'not an ip' is not a resolver address" -- \
    "$mx" send --recipients good.csv --message good.eml --from b@s.example --journal dns.jsonl --dns 'not an ip'
expect bad_dns_port 2 "'127.0.0.1:99999' is not a resolver address" -- \
    "$mx" send --recipients good.csv --message good.eml --from b@s.example --journal dns.jsonl --dns '127.0.0.1:99999'

# Relay and TLS options: usage errors before anything is opened or sent.
job=(--recipients good.csv --message good.eml --from b@s.example --progress off)
expect relay_and_route 2 '--relay and --route cannot be combined' -- \
    "$mx" send "${job[@]}" --relay 127.0.0.1:1 --route '*=127.0.0.1:1'
expect auth_without_relay 2 '--auth-user is for --relay' -- "$mx" send "${job[@]}" --auth-user u --route '*=127.0.0.1:1'
expect bad_relay 2 "--relay 'smtps://': expected \[smtp://\|smtps://\]HOST" -- "$mx" send "${job[@]}" --relay smtps://
expect relay_closed_port 2 'relay 127.0.0.1:1: cannot connect: Connection refused \(nothing was sent\)' -- \
    "$mx" send "${job[@]}" --relay 127.0.0.1:1 --journal relay.jsonl
printf 'pw\n' >pw
printf '[defaults]\ntls = "opportunistic"\n' >opp.toml
expect auth_needs_tls 2 'credentials are only sent over TLS' -- \
    "$mx" send "${job[@]}" --relay 127.0.0.1:1 --auth-user u --auth-password-file pw --config opp.toml
printf '[defaults]\ntls = "sometimes"\n' >badtls.toml
expect bad_tls_policy 2 'badtls.toml:2: \[defaults\] tls must be "disabled", "opportunistic", "required" or "verify"' -- \
    "$mx" check-config badtls.toml
printf 'not a certificate\n' >junk.pem
printf '[defaults]\ntls_ca_file = "junk.pem"\n' >junkca.toml
expect junk_ca_file 2 'junk.pem: cannot load CA certificates' -- \
    "$mx" send "${job[@]}" --route '*=127.0.0.1:1' --config junkca.toml --journal junk.jsonl
printf '[mx."*.example.net"]\ntls = "verify"\n' >mx.toml
expect check_config_tls 0 'tls = "opportunistic".*' -- "$mx" check-config mx.toml
expect check_config_mx 0 '\[mx."\*.example.net"\]' -- "$mx" check-config mx.toml

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
