#!/usr/bin/env bash
# tests/deb_package_test.sh SRC BUILD MAN_PAGES(ON|OFF)
# Builds the Debian package with `cpack -G DEB` from BUILD, unpacks it into a
# scratch root with `dpkg-deb -x` (the real system is never touched), and
# checks what an operator gets: the package's metadata, its files (binaries,
# headers, CMake package files, man pages), `mxpress --version` and a dry run
# from the unpacked files, both man pages rendered by man(1) without warnings
# and naming every subcommand, and find_package(mxpress) from the unpacked
# tree. Exit 77 (skipped) where the tools for it are missing.
set -euo pipefail
src=$1
build=$2
man_pages=$3

skip() { echo "skipped: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
for tool in cpack dpkg-deb man; do
  command -v "$tool" >/dev/null || skip "$tool is not installed"
done
[ "$man_pages" = ON ] || skip "help2man was not found when $build was configured: no man pages (scripts/setup installs it)"

tmp=$(mktemp -d /tmp/mxpress-deb-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

cpack -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/pkg" >"$tmp/cpack.log" 2>&1 ||
  { cat "$tmp/cpack.log"; fail "cpack -G DEB failed"; }
debs=("$tmp"/pkg/*.deb)
[ ${#debs[@]} -eq 1 ] && [ -f "${debs[0]}" ] || fail "cpack made no single .deb: ${debs[*]}"
deb=${debs[0]}
echo "built $(basename "$deb")"

# Metadata.
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = mxpress ] || fail "Package: $(field Package)"
version=$(field Version)
[ -n "$version" ] || fail "no Version"
[ "$(field Section)" = mail ] || fail "Section: $(field Section)"
[ -n "$(field Maintainer)" ] || fail "no Maintainer"
[ -n "$(field Description)" ] || fail "no Description"
if command -v dpkg-shlibdeps >/dev/null; then
  # Computed by dpkg-shlibdeps: the C library and the shared libraries linked.
  depends=$(field Depends)
  for lib in libc6 libssl3 libidn2-0; do
    grep -Eq "(^|, )$lib( |,|$)" <<<"$depends" || fail "Depends lacks $lib: $depends"
  done
fi

# Files.
dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|' >"$tmp/files"
for f in /usr/bin/mxpress /usr/bin/mxsink /usr/include/mxpress/mail/address.hpp \
         /usr/share/man/man1/mxpress.1.gz /usr/share/man/man1/mxsink.1.gz; do
  grep -qx "$f" "$tmp/files" || fail "$f is not in the package"
done
for f in mxpressConfig.cmake mxpressConfigVersion.cmake mxpressTargets.cmake; do
  grep -Eq "^/usr/lib/([^/]+/)?cmake/mxpress/$f$" "$tmp/files" || fail "the CMake package file $f is not in the package"
done

root="$tmp/root"
dpkg-deb -x "$deb" "$root"
mx="$root/usr/bin/mxpress"

# The installed binaries: --version says the package's version; a dry run works.
out=$("$mx" --version)
[ "$out" = "mxpress $version" ] || fail "mxpress --version says '$out', the package is $version"
[[ "$("$root/usr/bin/mxsink" --help)" == *--listen* ]] || fail "mxsink --help"
mkdir "$tmp/run"
printf 'email,name\nann@town.example,Ann\nbob@city.example,Bob\n' >"$tmp/run/list.csv"
printf 'Subject: Road works\r\n\r\nDear {{name}}, the road is closed.\r\n' >"$tmp/run/notice.eml"
(cd "$tmp/run" && "$mx" send --recipients list.csv --message notice.eml --from bounce@town.example \
    --dry-run --progress off >"$tmp/dry.out" 2>&1) || { cat "$tmp/dry.out"; fail "dry run from the package failed"; }
[ "$(grep -c '"status":"dry-run"' "$tmp/run/list.dry-run.jsonl")" -eq 2 ] ||
  { cat "$tmp/run/list.dry-run.jsonl"; fail "the dry run did not journal both rows as dry-run"; }

# Man pages: rendered without warnings; mxpress's names every subcommand.
for page in mxpress mxsink; do
  file="$root/usr/share/man/man1/$page.1.gz"
  MANWIDTH=80 man --warnings -E UTF-8 -l "$file" >"$tmp/$page.txt" 2>"$tmp/$page.err" ||
    { cat "$tmp/$page.err"; fail "man -l $page.1.gz failed"; }
  [ ! -s "$tmp/$page.err" ] || { cat "$tmp/$page.err"; fail "man -l $page.1.gz warns"; }
  grep -q "^NAME" "$tmp/$page.txt" && grep -q "$page" "$tmp/$page.txt" || fail "$page.1 has no NAME section"
done
for sub in send render suppressions dkim-record check-sender check-config rules explain-reply plan report; do
  grep -Eq "^ +mxpress $sub\$" "$tmp/mxpress.txt" || fail "mxpress.1 has no section for 'mxpress $sub'"
done
grep -q -- '--dry-run' "$tmp/mxpress.txt" || fail "mxpress.1 lacks send's options"
grep -q -- '--listen' "$tmp/mxsink.txt" || fail "mxsink.1 lacks mxsink's options"

# find_package(mxpress) from the unpacked tree.
cmake -S "$src/tests/install_consumer" -B "$tmp/consumer" -G Ninja -DCMAKE_PREFIX_PATH="$root/usr" \
  >"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "find_package(mxpress) from the package"; }
cmake --build "$tmp/consumer" >>"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "consumer build"; }
"$tmp/consumer/consumer"
echo "deb package ok: $(basename "$deb")"
