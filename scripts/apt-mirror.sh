#!/usr/bin/env bash
# Prints the URI of the Debian archive this machine's apt already uses (the
# first deb822 or one-line source whose suite is bookworm, or SUITE given as
# $1), so that no archive host name is written into this repository.
set -euo pipefail
suite=${1:-bookworm}
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
    # deb822: paragraphs separated by blank lines.
    uri=$(awk -v suite="$suite" '
        BEGIN { RS = ""; FS = "\n" }
        {
            uris = ""; ok = 0; deb = 0
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris = u[1] }
                if ($i ~ /^Types:/ && $i ~ /(^|[ \t])deb([ \t]|$)/) deb = 1
                if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
            }
            if (ok && deb && uris != "") { print uris; exit }
        }' "$f")
    if [ -n "$uri" ]; then echo "${uri%/}"; exit 0; fi
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk -v suite="$suite" '
        $1 == "deb" {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit }
        }' "$f")
    if [ -n "$uri" ]; then echo "${uri%/}"; exit 0; fi
done
echo "error: no apt source for suite $suite in /etc/apt/sources.list(.d): add one, or set the mirror explicitly" >&2
exit 1
