#!/bin/sh
# Prints the directory holding Debian's cloud-init 22.4.2 Python package
# (`cloudinit/`), fetching it first when the cache does not have it yet:
# `apt-get download` through the machine's own apt sources, then
# `dpkg-deb -x`. Nothing is installed. Fails loudly: a missing judge is a
# setup error, never a reason to skip a test.
set -eu
version_prefix="22.4.2-"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/prepare-image-judge"
dest="$cache/cloud-init-22.4.2"
packages="$dest/usr/lib/python3/dist-packages"
if [ -f "$packages/cloudinit/util.py" ]; then
    echo "$packages"
    exit 0
fi
command -v apt-get >/dev/null || { echo "apt-get is missing: cannot fetch Debian's cloud-init" >&2; exit 1; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
version=$(apt-cache policy cloud-init | sed -n 's/^ *Candidate: *//p')
case "$version" in
    "$version_prefix"*) ;;
    *) echo "apt offers cloud-init '$version', not 22.4.2 (Debian 12): the judge must be 22.4.2" >&2; exit 1 ;;
esac
(cd "$work" && apt-get download "cloud-init=$version" >&2)
dpkg-deb -x "$work"/cloud-init_*.deb "$work/x"
[ -f "$work/x/usr/lib/python3/dist-packages/cloudinit/util.py" ] || { echo "the cloud-init package has no cloudinit/util.py" >&2; exit 1; }
rm -rf "$dest"
mv "$work/x" "$dest"
echo "$packages"
