#!/usr/bin/env bash
# Build a statically linked prepare-image for x86_64 Linux: no dynamic
# loader, no shared libraries, so the one file runs in any x86_64 guest a
# Packer build uploads it into (CentOS 7 era included), whatever its glibc.
#
#   scripts/build-static.sh [extra cargo build arguments]
#
# Prints the binary's path on stdout (everything else goes to stderr):
#   target/x86_64-unknown-linux-gnu/release/prepare-image
# (under $CARGO_TARGET_DIR instead of target/ when that is set).
#
# How: glibc's static libraries with `-C target-feature=+crt-static` on the
# x86_64-unknown-linux-gnu target (the musl target is not needed). Naming the
# target explicitly matters: with --target, RUSTFLAGS apply only to the
# target's code, not to build scripts and proc macros, which must stay
# dynamic. The result is a static PIE (ELF type DYN, no PT_INTERP, no
# DT_NEEDED); tests/static_binary.rs checks that and runs it in an empty
# chroot.
#
# glibc's static-linking caveat is about NSS (getpwnam, getaddrinfo, ...),
# which would dlopen shared libraries at run time. prepare-image calls none
# of those (owners are copied as numeric ids); the link prints no such
# warning.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
cargo="${CARGO:-cargo}"

RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    "$cargo" build --release --locked --target "$target" "$@" >&2

echo "${CARGO_TARGET_DIR:-target}/$target/release/prepare-image"
