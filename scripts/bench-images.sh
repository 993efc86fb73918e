#!/usr/bin/env bash
# bench-images.sh: how long one real edit of an image file takes, three ways.
#
# A benchmark, not a test. On the same 2 GiB raw image (GPT, one ext4 root
# partition made by `mkfs.ext4 -d TREE`, TREE holding etc/cloud/cloud.cfg =
# tests/fixtures/cloud-cfg/tencent-centos-rhel8.5.cfg) and on its qcow2 copy,
# it makes the edit of `--keep hostname` (preserve_hostname: true, and
# `scripts-user` removed from the module lists) with:
#
#   prepare-image    prepare-image --keep hostname IMG
#   virt-customize   virt-customize --format=raw|qcow2 -a IMG --no-network
#                      --edit '/etc/cloud/cloud.cfg:PERL'  (the same edit)
#   bare             the floor a shell script can reach: raw: losetup -o
#                    OFFSET --sizelimit SIZE, mount, cp of a pre-edited
#                    cloud.cfg, umount, losetup -d of exactly that device;
#                    qcow2: the same on a qemu-storage-daemon FUSE export of
#                    the image (started with --daemonize, stopped with TERM).
#                    The partition offset and the mountpoints are prepared
#                    beforehand, outside the timing.
#
# and then prepare-image and bare again on a sparse 50 GiB raw image of the
# same layout (the partition and its ext4 fill the disk; mkfs with lazy
# inode-table and journal init, so only a few MiB are written).
#
# On the raw images it also times the read-only `doctor` and `clean` (the
# tree holds a previous instance's /var/lib/cloud) against their floors:
#
#   doctor           prepare-image doctor IMG (exit 0 or 4)
#   bare-ro          losetup -r, mount -o ro,noload, cat etc/os-release,
#                    umount, losetup -d
#   clean            prepare-image clean IMG
#   bare-clean       losetup, mount, rm -rf var/lib/cloud, umount, losetup -d
#
# and the reads prepare-image does in user space (no loop device, no mount),
# as root and as an unprivileged user (BENCH_USER, run with setpriv), on
# the raw images and the qcow2 one, against the bare read floor (bare-ro;
# for qcow2, whose read floor would need the FUSE export, the bare edit):
#
#   status           prepare-image status IMG (as root)
#   status-user      the same as BENCH_USER
#   check-user       prepare-image --keep hostname --check IMG as BENCH_USER
#                    (exit 3: the edit is pending)
#   setpriv          setpriv as for those two, running /bin/true: the wrapper's
#                    own cost (an unprivileged user does not pay it), also
#                    reported subtracted from the rootless rows
#
# (the image of a rootless run belongs to BENCH_USER, as one the user built)
#
# The runs alternate (round-robin over every image and method in one loop),
# so machine noise hits all methods alike. Before every run the image is
# reset from a pristine copy (`cp --sparse=always`, then fsync of the copy;
# not timed), and after every run the image's cloud.cfg is checked against
# the expected bytes (not timed). One untimed warm-up run per method comes
# first (for virt-customize it also builds libguestfs's appliance cache).
# Wall time is taken with bash's $EPOCHREALTIME (no fork, µs resolution)
# around the command(s). Prints median, min and max per method in ms, and
# the ratios prepare-image/virt-customize and prepare-image/bare.
#
# Usage (as root):  scripts/bench-images.sh
#
# Environment:
#   PREPARE_IMAGE              binary to measure (default:
#                              target/release/prepare-image of this repo;
#                              copied into the work dir first, so a rebuild
#                              during the run does not change it)
#   BENCH_RUNS                 timed runs per method and image (default 7)
#   BENCH_RUNS_PREPARE_IMAGE   runs of prepare-image (default BENCH_RUNS)
#   BENCH_RUNS_VIRT_CUSTOMIZE  runs of virt-customize (default BENCH_RUNS;
#                              each takes ~17 s under TCG)
#   BENCH_RUNS_BARE            runs of the bare floor (default BENCH_RUNS)
#   BENCH_VIRT_CUSTOMIZE=0     skip virt-customize (libguestfs not needed)
#   BENCH_QCOW2=0              skip the qcow2 image
#   BENCH_BIG=0                skip the 50 GiB image
#   BENCH_BIG_VIRT_CUSTOMIZE=1 also run virt-customize on the 50 GiB image
#   BENCH_WARMUP=0             no untimed warm-up runs
#   BENCH_DOCTOR=0             skip doctor, clean, the status rows and their floors
#   BENCH_USER                 the unprivileged user of the rootless rows
#                              (default nobody)
#   BENCH_VC_NETWORK=1         let virt-customize start its network (default
#                              --no-network: the edit needs none)
#   BENCH_TMPDIR               where the work dir goes (default /var/tmp)
#   BENCH_KERNEL_DIR           where a Debian kernel is unpacked for supermin
#                              when /boot has none (default
#                              ${XDG_CACHE_HOME:-$HOME/.cache}/prepare-image-bench/kernel)
#   BENCH_NO_DOWNLOAD=1        never `apt-get download` that kernel; report
#                              it missing instead
#   LIBGUESTFS_BACKEND         default: direct
#   LIBGUESTFS_BACKEND_SETTINGS default: force_tcg (a nested /dev/kvm can hang
#                              the appliance); set it empty to allow KVM
#   SUPERMIN_KERNEL, SUPERMIN_KERNEL_VERSION, SUPERMIN_MODULES: if set, used
#                              as they are
#
# Needs the Debian packages fdisk, e2fsprogs, qemu-utils (qemu-img and
# qemu-storage-daemon; on Debian 12 from bookworm-backports), mount and, for
# virt-customize, libguestfs-tools plus a kernel for supermin's appliance
# (linux-image-amd64's kernel, unpacked into BENCH_KERNEL_DIR by this script
# with `apt-get download` + `dpkg-deb -x` + `depmod` when /boot has none).
# The script installs no package: it names the missing ones and exits 1.
#
# It re-executes itself in a private mount namespace (`unshare --mount
# --propagation private`), like prepare-image, so the bare floor's mounts
# are as invisible to the host as prepare-image's. Everything it makes
# lives in one `mktemp -d` work dir. On every exit path
# (EXIT, INT, TERM) it unmounts what is mounted under that dir, detaches the
# loop devices whose backing file is in that dir (and no other), stops the
# qemu-storage-daemon processes it started (by their pid files in that dir),
# and removes the dir. It never uses `losetup -D` or touches other devices.
# An empty /lib/modules it had to create for supermin is removed again.
# hyperfine is not used: the runs of different methods must interleave.
set -euo pipefail
export LC_ALL=C

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd -- "$script_dir/.." && pwd)

PREPARE_IMAGE=${PREPARE_IMAGE:-$repo_dir/target/release/prepare-image}
FIXTURE=$repo_dir/tests/fixtures/cloud-cfg/tencent-centos-rhel8.5.cfg
RUNS=${BENCH_RUNS:-7}
RUNS_PI=${BENCH_RUNS_PREPARE_IMAGE:-$RUNS}
RUNS_VC=${BENCH_RUNS_VIRT_CUSTOMIZE:-$RUNS}
RUNS_BARE=${BENCH_RUNS_BARE:-$RUNS}
DO_VC=${BENCH_VIRT_CUSTOMIZE:-1}
DO_QCOW2=${BENCH_QCOW2:-1}
DO_BIG=${BENCH_BIG:-1}
DO_BIG_VC=${BENCH_BIG_VIRT_CUSTOMIZE:-0}
DO_WARMUP=${BENCH_WARMUP:-1}
DO_DOCTOR=${BENCH_DOCTOR:-1}
BENCH_USER=${BENCH_USER:-nobody}
VC_NETWORK=${BENCH_VC_NETWORK:-0}
TMP_PARENT=${BENCH_TMPDIR:-/var/tmp}
KERNEL_DIR=${BENCH_KERNEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/prepare-image-bench/kernel}
NO_DOWNLOAD=${BENCH_NO_DOWNLOAD:-0}

SMALL_SIZE=$((2 * 1024 * 1024 * 1024))
BIG_SIZE=$((50 * 1024 * 1024 * 1024))
# The perl expression virt-customize --edit runs on every line of cloud.cfg
# ($_ holds the line with its newline): the same two changes prepare-image
# makes to this fixture.
# shellcheck disable=SC2016  # perl, not shell
VC_EXPR='s/^ - scripts-user\n\z//; $_ .= "preserve_hostname: true\n" if eof'

die() {
    printf 'bench-images: %s\n' "$*" >&2
    exit 1
}
note() { printf '%s\n' "$*" >&2; }

for n in "$RUNS_PI" "$RUNS_VC" "$RUNS_BARE"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "run counts must be positive integers (got '$n')"
done

# ---------------------------------------------------------------- checks ---

[[ $EUID -eq 0 ]] || die "run as root: it attaches loop devices, mounts filesystems and starts qemu-storage-daemon FUSE exports"

# Run in a mount namespace of our own with private propagation, as
# prepare-image does: our mounts stay invisible to the host, and no other
# process that unshares its mount namespace meanwhile (prepare-image's own
# tests do) gets a copy of a filesystem we mount. Such a copy would keep
# the filesystem alive after our umount, so `losetup -d` would only mark
# the device for autoclear and the edit would reach the image file later.
if [[ ${PREPARE_IMAGE_BENCH_IN_NAMESPACE:-} != 1 ]]; then
    command -v unshare >/dev/null 2>&1 || die "missing Debian package: util-linux (unshare)"
    export PREPARE_IMAGE_BENCH_IN_NAMESPACE=1
    exec unshare --mount --propagation private -- "$BASH" "${BASH_SOURCE[0]}" "$@"
fi
[[ -e /dev/loop-control ]] || die "/dev/loop-control is missing: this kernel has no loop device support (modprobe loop)"
[[ $DO_QCOW2 != 1 || -e /dev/fuse ]] || die "/dev/fuse is missing: the qcow2 bare floor needs FUSE (modprobe fuse), or set BENCH_QCOW2=0"
[[ -f $FIXTURE ]] || die "$FIXTURE not found"
[[ -x $PREPARE_IMAGE ]] || die "$PREPARE_IMAGE not found: build it with \`cargo build --release\` (or set PREPARE_IMAGE)"
[[ $TMP_PARENT != *[[:space:],]* ]] || die "BENCH_TMPDIR must not contain spaces or commas"
[[ -n ${EPOCHREALTIME:-} ]] || die "bash 5 or later is needed (\$EPOCHREALTIME)"

missing=()
need() { # need PACKAGE COMMAND...
    local package=$1 command
    shift
    for command; do
        if ! command -v "$command" >/dev/null 2>&1; then
            [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
            return
        fi
    done
}
need fdisk sfdisk
need e2fsprogs mkfs.ext4 debugfs
need mount losetup mount umount
need qemu-utils qemu-img
[[ $DO_QCOW2 != 1 ]] || need qemu-utils qemu-storage-daemon
if [[ $DO_VC == 1 ]]; then
    need libguestfs-tools virt-customize
fi

# supermin builds libguestfs's appliance from the host's kernel. A machine
# with no kernel in /boot (a container, a firecracker VM) needs one unpacked
# from Debian's linux-image-amd64 dependency, with its modules and depmod.
kernel_missing=0
kernel_version=
system_kernel() {
    local k
    for k in /boot/vmlinuz-*; do
        [[ -f $k ]] && [[ -d /lib/modules/${k#/boot/vmlinuz-} ]] && return 0
    done
    return 1
}
cached_kernel() {
    local k
    for k in "$KERNEL_DIR"/boot/vmlinuz-*; do
        [[ -f $k ]] || continue
        kernel_version=${k##*/vmlinuz-}
        [[ -d $KERNEL_DIR/lib/modules/$kernel_version ]] && return 0
    done
    return 1
}
if [[ $DO_VC == 1 && -z ${SUPERMIN_KERNEL:-} ]] && ! system_kernel && ! cached_kernel; then
    kernel_missing=1
fi

if ((${#missing[@]} > 0)) || { ((kernel_missing)) && [[ $NO_DOWNLOAD == 1 ]]; }; then
    note "bench-images: missing Debian packages:"
    for p in "${missing[@]}"; do note "  $p"; done
    if ((kernel_missing)); then
        note "  linux-image-amd64 (its kernel unpacked for supermin: no kernel in /boot and none in $KERNEL_DIR)"
    fi
    if ((${#missing[@]} > 0)); then
        note "install with:  apt-get update && apt-get install --no-install-recommends ${missing[*]}"
        if [[ " ${missing[*]} " == *" qemu-utils "* ]]; then
            note "  (on Debian 12, qemu-storage-daemon is in qemu-utils from bookworm-backports: apt-get install -t bookworm-backports qemu-utils)"
        fi
    fi
    if ((kernel_missing)); then
        note "unpack the kernel with:  pkg=\$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: *//p' | head -1)"
        note "  mkdir -p $KERNEL_DIR && cd $KERNEL_DIR && apt-get download \"\$pkg\" && dpkg-deb -x \"\$pkg\"_*.deb . && depmod -b . \"\${pkg#linux-image-}\""
        note "  (or run this script without BENCH_NO_DOWNLOAD=1: it does exactly that)"
    fi
    exit 1
fi

# ---------------------------------------------------------------- cleanup ---

work=
created_lib_modules=0

# The loop devices whose backing file lies in our work dir: only we (and
# the tools we ran on our files) attach those.
our_loop_devices() {
    local f backing
    for f in /sys/block/loop*/loop/backing_file; do
        [[ -r $f ]] || continue
        backing=$(<"$f") 2>/dev/null || continue
        [[ $backing == "$work"/* ]] && { f=${f#/sys/block/}; printf '/dev/%s\n' "${f%%/*}"; }
    done
    return 0
}

# "FSTYPE MOUNTPOINT" of the mounts under our work dir, deepest first.
our_mounts() {
    local line mp fstype
    while read -r line; do
        mp=${line#* * * * }
        mp=${mp%% *}
        mp=$(printf '%b' "${mp//\\/\\0}")
        fstype=${line#* - }
        fstype=${fstype%% *}
        [[ $mp == "$work"/* ]] && printf '%s %s\n' "$fstype" "$mp"
    done </proc/self/mountinfo | sort -r -k2
    return 0
}

# Stops the qemu-storage-daemon whose pid file is $1, if it still runs and
# is ours (its command line names our work dir).
stop_daemon() {
    local pidfile=$1 pid state i
    [[ -f $pidfile ]] || return 0
    read -r pid <"$pidfile" 2>/dev/null || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$work/" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 2000; i++)); do
        read -r state <"/proc/$pid/stat" 2>/dev/null || return 0
        state=${state##*) }
        [[ ${state%% *} == Z ]] && return 0
        sleep 0.01
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? fstype mp dev f left
    trap - EXIT
    trap '' INT TERM # finish cleaning up first
    set +e
    if [[ -n $work && -d $work ]]; then
        # 1. filesystems mounted from loop devices (not the FUSE exports)
        while read -r fstype mp; do
            [[ -n $mp && $fstype != fuse* ]] || continue
            umount -- "$mp" 2>/dev/null || umount -l -- "$mp"
        done < <(our_mounts)
        # 2. loop devices backed by our files, exactly those
        for dev in $(our_loop_devices); do
            losetup -d "$dev" 2>/dev/null || note "bench-images: could not detach $dev"
        done
        # 3. our qemu-storage-daemons
        for f in "$work"/qsd-*/pid; do
            [[ -e $f ]] && stop_daemon "$f"
        done
        # 4. anything still mounted under the work dir (a FUSE export whose
        #    daemon died)
        while read -r fstype mp; do
            [[ -n $mp ]] && umount -l -- "$mp"
        done < <(our_mounts)
        left=$(our_mounts)
        if [[ -z $left ]]; then
            rm -rf --one-file-system -- "$work"
        else
            note "bench-images: still mounted, so $work was left in place: $left"
        fi
    fi
    if ((created_lib_modules)); then
        rmdir /lib/modules 2>/dev/null
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

work=$(mktemp -d "$TMP_PARENT/prepare-image-bench.XXXXXX")

# ---------------------------------------------------------------- kernel ---

if ((kernel_missing)); then
    note "bench-images: no kernel for supermin; unpacking Debian's linux-image-amd64 kernel into $KERNEL_DIR"
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: *//p' | grep '^linux-image-' | head -1) ||
        true
    [[ -n $pkg ]] || die "apt-cache does not know linux-image-amd64: run apt-get update first (the kernel for supermin is missing)"
    mkdir -p "$work/kernel-download"
    (cd "$work/kernel-download" && apt-get download "$pkg") >"$work/kernel-download.log" 2>&1 ||
        die "apt-get download $pkg failed: $(tail -3 "$work/kernel-download.log")"
    mkdir -p "$KERNEL_DIR"
    dpkg-deb -x "$work"/kernel-download/"$pkg"_*.deb "$KERNEL_DIR"
    cached_kernel || die "no vmlinuz in $pkg"
fi
if [[ $DO_VC == 1 && -z ${SUPERMIN_KERNEL:-} ]] && ! system_kernel; then
    cached_kernel || die "no kernel in $KERNEL_DIR"
    if [[ ! -f $KERNEL_DIR/lib/modules/$kernel_version/modules.dep ]]; then
        need kmod depmod
        ((${#missing[@]} == 0)) || die "missing Debian package: kmod (depmod, for the kernel modules in $KERNEL_DIR)"
        depmod -b "$KERNEL_DIR" "$kernel_version"
    fi
    export SUPERMIN_KERNEL=$KERNEL_DIR/boot/vmlinuz-$kernel_version
    export SUPERMIN_KERNEL_VERSION=$kernel_version
    export SUPERMIN_MODULES=$KERNEL_DIR/lib/modules/$kernel_version
fi
if [[ $DO_VC == 1 && ! -d /lib/modules ]]; then
    # supermin looks at the host's /lib/modules even when told another path.
    mkdir /lib/modules
    created_lib_modules=1
fi
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS-force_tcg}

# ---------------------------------------------------------------- images ---

mkdir -p "$work/bin" "$work/mnt" "$work/times" "$work/logs"
cp -- "$PREPARE_IMAGE" "$work/bin/prepare-image"
PI=$work/bin/prepare-image
# The rootless rows run as BENCH_USER: it must reach the binary and the images.
chmod 0755 -- "$work" "$work/bin" "$PI"

# The tree: the fixture as cloud.cfg, plus what libguestfs's inspection
# needs to call the filesystem a Linux root (/etc, /bin, /etc/fstab) and
# what makes it the CentOS 8 the fixture is from. prepare-image needs only
# etc/cloud/cloud.cfg.
tree=$work/tree
mkdir -p "$tree/etc/cloud" "$tree/bin"
install -m 0644 -- "$FIXTURE" "$tree/etc/cloud/cloud.cfg"
printf 'NAME="CentOS Linux"\nVERSION="8"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="8"\nPRETTY_NAME="CentOS Linux 8"\n' >"$tree/etc/os-release"
printf 'CentOS Linux release 8.5.2111\n' >"$tree/etc/redhat-release"
printf 'LABEL=root / ext4 defaults 0 1\n' >"$tree/etc/fstab"
printf '127.0.0.1 localhost\n' >"$tree/etc/hosts"
# A previous instance's state, for clean (doctor reports it: exit 4).
mkdir -p "$tree/var/lib/cloud/data" "$tree/var/lib/cloud/instances/i-bench/sem"
printf 'i-bench\n' >"$tree/var/lib/cloud/data/instance-id"
: >"$tree/var/lib/cloud/instances/i-bench/sem/config_ssh"
ln -s /var/lib/cloud/instances/i-bench "$tree/var/lib/cloud/instance"

# The expected result: prepare-image's own edit of the tree (a directory
# target), which the perl expression must reproduce byte for byte.
cp -a -- "$tree" "$work/expected-tree"
"$PI" --keep hostname "$work/expected-tree" >"$work/logs/expected.out" 2>&1 ||
    die "prepare-image --keep hostname on a directory failed: $(cat "$work/logs/expected.out")"
expected=$work/expected.cfg
cp -- "$work/expected-tree/etc/cloud/cloud.cfg" "$expected"
rm -rf -- "$work/expected-tree"
cmp -s -- "$expected" "$tree/etc/cloud/cloud.cfg" && die "prepare-image --keep hostname changed nothing in the fixture"
if [[ $DO_VC == 1 ]]; then
    VC_EXPR=$VC_EXPR perl -e 'while (<STDIN>) { eval $ENV{VC_EXPR}; die $@ if $@; print }' \
        <"$tree/etc/cloud/cloud.cfg" >"$work/perl.cfg"
    cmp -s -- "$work/perl.cfg" "$expected" ||
        die "the virt-customize perl expression does not give prepare-image's result: $(diff -- "$expected" "$work/perl.cfg")"
fi

declare -A part_offset part_size
# make_image FILE SIZE: GPT, one Linux partition from 1 MiB to the end, ext4
# made from the tree; sparse.
make_image() {
    local file=$1 size=$2 line start sectors
    truncate -s "$size" -- "$file"
    printf 'label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n' |
        sfdisk -q --no-reread --no-tell-kernel -- "$file" >/dev/null
    line=$(sfdisk --dump -- "$file" | grep -E '^[^:]*1 :')
    start=$(sed -E 's/.*start= *([0-9]+).*/\1/' <<<"$line")
    sectors=$(sed -E 's/.*size= *([0-9]+).*/\1/' <<<"$line")
    mkfs.ext4 -q -F -L root -E "offset=$((start * 512)),lazy_itable_init=1,lazy_journal_init=1" \
        -d "$tree" -- "$file" "$((sectors / 2))k" >/dev/null
    part_offset[$file]=$((start * 512))
    part_size[$file]=$((sectors * 512))
}

base_small=$work/base-2g.raw
base_qcow2=$work/base-2g.qcow2
base_big=$work/base-50g.raw
make_image "$base_small" "$SMALL_SIZE"
if [[ $DO_QCOW2 == 1 ]]; then
    qemu-img convert -f raw -O qcow2 -- "$base_small" "$base_qcow2"
    part_offset[$base_qcow2]=${part_offset[$base_small]}
    part_size[$base_qcow2]=${part_size[$base_small]}
fi
if [[ $DO_BIG == 1 ]]; then
    make_image "$base_big" "$BIG_SIZE"
fi

# ---------------------------------------------------------------- methods ---

now_us() { local t=$EPOCHREALTIME; printf '%s' "${t/./}"; }

# qemu option values double a literal comma; our paths have none, checked
# above, but the work dir comes from mktemp under BENCH_TMPDIR.
qemu_path() { printf '%s' "${1//,/,,}"; }

# The bare floor on a raw file: exactly the device it attaches. (Called
# where errexit does not apply, so every step checks for itself; a device
# left attached by a failed step is detached by the cleanup.)
bare_raw() { # FILE OFFSET SIZE
    local dev
    dev=$(losetup -f --show -o "$2" --sizelimit "$3" -- "$1") || return 1
    mount -t ext4 -o nosuid,nodev,noexec -- "$dev" "$work/mnt" || return 1
    cp -- "$expected" "$work/mnt/etc/cloud/cloud.cfg" || return 1
    umount -- "$work/mnt" || return 1
    losetup -d "$dev" || return 1
}

# The bare floor on a qcow2: a qemu-storage-daemon FUSE export of the image
# as raw (--daemonize returns once the export is up), bare_raw on it, then
# TERM and wait until the daemon has exited (it is not our child after
# --daemonize, so wait for its zombie state: init may reap it late).
qsd_dir=$work/qsd-view
bare_qcow2() { # FILE OFFSET SIZE
    local pid state deadline
    qemu-storage-daemon --daemonize --pidfile "$qsd_dir/pid" \
        --blockdev "driver=file,node-name=file,filename=$(qemu_path "$1")" \
        --blockdev "driver=qcow2,node-name=image,file=file" \
        --export "type=fuse,id=raw,node-name=image,mountpoint=$(qemu_path "$qsd_dir/raw"),writable=on" ||
        return 1
    bare_raw "$qsd_dir/raw" "$2" "$3" || return 1
    read -r pid <"$qsd_dir/pid" || return 1
    kill -TERM "$pid" || return 1
    deadline=$((SECONDS + 30))
    while read -r state 2>/dev/null <"/proc/$pid/stat"; do
        state=${state##*) }
        [[ ${state%% *} == Z ]] && break
        if ((SECONDS > deadline)); then
            echo "qemu-storage-daemon $pid did not exit within 30 s of TERM"
            return 1
        fi
    done
    return 0
}

# The read-only floor of doctor: attach and mount read-only (no journal
# replay, as prepare-image), read one file, release.
bare_ro() { # FILE OFFSET SIZE
    local dev
    dev=$(losetup -r -f --show -o "$2" --sizelimit "$3" -- "$1") || return 1
    mount -t ext4 -o ro,noload,nosuid,nodev,noexec -- "$dev" "$work/mnt" || return 1
    cat -- "$work/mnt/etc/os-release" >/dev/null || return 1
    umount -- "$work/mnt" || return 1
    losetup -d "$dev" || return 1
}

# The floor of clean: attach, mount, rm -rf var/lib/cloud, release.
bare_clean() { # FILE OFFSET SIZE
    local dev
    dev=$(losetup -f --show -o "$2" --sizelimit "$3" -- "$1") || return 1
    mount -t ext4 -o nosuid,nodev,noexec -- "$dev" "$work/mnt" || return 1
    rm -rf --one-file-system -- "$work/mnt/var/lib/cloud" || return 1
    umount -- "$work/mnt" || return 1
    losetup -d "$dev" || return 1
}

vc_args=()
[[ $VC_NETWORK == 1 ]] || vc_args+=(--no-network)

# Runs a command as BENCH_USER, with no capabilities and no groups.
as_user() {
    setpriv "--reuid=$BENCH_USER" "--regid=$(id -g "$BENCH_USER")" --clear-groups -- "$@"
}

# run_method METHOD FORMAT FILE LOG: the timed part only.
run_method() {
    local method=$1 format=$2 file=$3 log=$4
    case $method in
        prepare-image)
            "$PI" --keep hostname "$file" >"$log" 2>&1
            ;;
        virt-customize)
            virt-customize "--format=$format" -a "$file" "${vc_args[@]}" \
                --edit "/etc/cloud/cloud.cfg:$VC_EXPR" >"$log" 2>&1
            ;;
        doctor)
            local rc=0
            "$PI" doctor "$file" >"$log" 2>&1 || rc=$?
            ((rc == 0 || rc == 4))
            ;;
        bare-ro)
            bare_ro "$file" "${part_offset[$file]}" "${part_size[$file]}" >"$log" 2>&1
            ;;
        clean)
            "$PI" clean "$file" >"$log" 2>&1
            ;;
        status)
            "$PI" status "$file" >"$log" 2>&1
            ;;
        status-user)
            as_user "$PI" status "$file" >"$log" 2>&1
            ;;
        setpriv)
            as_user /bin/true >"$log" 2>&1
            ;;
        check-user)
            local rc=0
            as_user "$PI" --keep hostname --check "$file" >"$log" 2>&1 || rc=$?
            ((rc == 3))
            ;;
        bare-clean)
            bare_clean "$file" "${part_offset[$file]}" "${part_size[$file]}" >"$log" 2>&1
            ;;
        bare)
            if [[ $format == raw ]]; then
                bare_raw "$file" "${part_offset[$file]}" "${part_size[$file]}" >"$log" 2>&1
            else
                bare_qcow2 "$file" "${part_offset[$file]}" "${part_size[$file]}" >"$log" 2>&1
            fi
            ;;
    esac
}

# The cloud.cfg inside a raw image file, as bytes.
read_cloud_cfg() { # RAWFILE OFFSET OUT
    debugfs -R 'cat /etc/cloud/cloud.cfg' "$1?offset=$2" >"$3" 2>/dev/null
}

# What a method leaves: the edited cloud.cfg, the untouched one (doctor,
# clean), and for clean no var/lib/cloud.
verify() { # METHOD FORMAT FILE OFFSET
    local method=$1 format=$2 file=$3 offset=$4 raw=$3 want=$expected
    case $method in
        doctor | bare-ro | clean | bare-clean | status | status-user | check-user | setpriv) want=$tree/etc/cloud/cloud.cfg ;;
    esac
    if [[ $method == clean || $method == bare-clean ]] &&
        debugfs -R 'stat /var/lib/cloud' "$file?offset=$offset" 2>/dev/null | grep -q '^Inode:'; then
        return 1
    fi
    if [[ $format != raw ]]; then
        raw=$work/verify.raw
        rm -f -- "$raw"
        qemu-img convert -f "$format" -O raw -- "$file" "$raw" ||
            die "could not convert $file to raw to read cloud.cfg back"
    fi
    read_cloud_cfg "$raw" "$offset" "$work/got.cfg" ||
        die "could not read cloud.cfg back from $raw with debugfs"
    [[ $format == raw ]] || rm -f -- "$raw"
    cmp -s -- "$work/got.cfg" "$want"
}

# ------------------------------------------------------------------ jobs ---

# Each job: LABEL METHOD FORMAT PRISTINE RUNS, in round-robin order.
jobs=()
add_job() { jobs+=("$1|$2|$3|$4|$5"); }
add_job "2 GiB raw" prepare-image raw "$base_small" "$RUNS_PI"
[[ $DO_VC == 1 ]] && add_job "2 GiB raw" virt-customize raw "$base_small" "$RUNS_VC"
add_job "2 GiB raw" bare raw "$base_small" "$RUNS_BARE"
if [[ $DO_DOCTOR == 1 ]]; then
    add_job "2 GiB raw" doctor raw "$base_small" "$RUNS_PI"
    add_job "2 GiB raw" bare-ro raw "$base_small" "$RUNS_BARE"
    add_job "2 GiB raw" clean raw "$base_small" "$RUNS_PI"
    add_job "2 GiB raw" bare-clean raw "$base_small" "$RUNS_BARE"
    add_job "2 GiB raw" status raw "$base_small" "$RUNS_PI"
    add_job "2 GiB raw" status-user raw "$base_small" "$RUNS_PI"
    add_job "2 GiB raw" check-user raw "$base_small" "$RUNS_PI"
    add_job "2 GiB raw" setpriv raw "$base_small" "$RUNS_PI"
fi
if [[ $DO_QCOW2 == 1 ]]; then
    add_job "2 GiB qcow2" prepare-image qcow2 "$base_qcow2" "$RUNS_PI"
    [[ $DO_VC == 1 ]] && add_job "2 GiB qcow2" virt-customize qcow2 "$base_qcow2" "$RUNS_VC"
    add_job "2 GiB qcow2" bare qcow2 "$base_qcow2" "$RUNS_BARE"
    if [[ $DO_DOCTOR == 1 ]]; then
        add_job "2 GiB qcow2" status qcow2 "$base_qcow2" "$RUNS_PI"
        add_job "2 GiB qcow2" status-user qcow2 "$base_qcow2" "$RUNS_PI"
        add_job "2 GiB qcow2" check-user qcow2 "$base_qcow2" "$RUNS_PI"
    fi
fi
if [[ $DO_BIG == 1 ]]; then
    add_job "50 GiB raw" prepare-image raw "$base_big" "$RUNS_PI"
    [[ $DO_VC == 1 && $DO_BIG_VC == 1 ]] && add_job "50 GiB raw" virt-customize raw "$base_big" "$RUNS_VC"
    add_job "50 GiB raw" bare raw "$base_big" "$RUNS_BARE"
    if [[ $DO_DOCTOR == 1 ]]; then
        add_job "50 GiB raw" doctor raw "$base_big" "$RUNS_PI"
        add_job "50 GiB raw" bare-ro raw "$base_big" "$RUNS_BARE"
        add_job "50 GiB raw" status raw "$base_big" "$RUNS_PI"
        add_job "50 GiB raw" status-user raw "$base_big" "$RUNS_PI"
        add_job "50 GiB raw" check-user raw "$base_big" "$RUNS_PI"
    fi
fi
mkdir -p "$qsd_dir"
: >"$qsd_dir/raw"

# one_run JOBINDEX TIMED(0|1): reset, run, verify; appends µs to the job's
# times file when timed.
one_run() {
    local index=$1 timed=$2 label method format pristine runs file log t0 t1
    IFS='|' read -r label method format pristine runs <<<"${jobs[$index]}"
    file=$work/work-${pristine##*/base-}
    log=$work/logs/job$index.log
    # Reset (not timed): a fresh sparse copy of the pristine image, on disk.
    rm -f -- "$file"
    cp --sparse=always -- "$pristine" "$file"
    sync -- "$file"
    # A rootless run reads an image its user built, so owns (what lets the
    # kernel's lease answer "no writer" instead of a walk of /proc).
    case $method in
    *-user) chown -- "$BENCH_USER" "$file" ;;
    esac
    part_offset[$file]=${part_offset[$pristine]}
    part_size[$file]=${part_size[$pristine]}
    t0=$(now_us)
    if ! run_method "$method" "$format" "$file" "$log"; then
        note "bench-images: $method on $label failed:"
        tail -n 20 -- "$log" >&2
        exit 1
    fi
    t1=$(now_us)
    verify "$method" "$format" "$file" "${part_offset[$file]}" ||
        die "$method on $label: cloud.cfg is not the expected result: $(diff -- "$expected" "$work/got.cfg")"
    if ((timed)); then
        printf '%s\n' "$((t1 - t0))" >>"$work/times/job$index"
    fi
    printf '  %-12s %-15s %10.1f ms%s\n' "$label" "$method" "$((t1 - t0))e-3" "$( ((timed)) || echo ' (warm-up)')" >&2
}

note "bench-images: prepare-image $("$PI" --version 2>/dev/null | awk '{print $2}') ($PREPARE_IMAGE, sha256 $(sha256sum <"$PI" | cut -c1-12))"
[[ $DO_VC == 1 ]] && note "bench-images: $(virt-customize --version 2>/dev/null | head -1); LIBGUESTFS_BACKEND=$LIBGUESTFS_BACKEND LIBGUESTFS_BACKEND_SETTINGS=$LIBGUESTFS_BACKEND_SETTINGS SUPERMIN_KERNEL=${SUPERMIN_KERNEL:-(system)}"
note "bench-images: $(qemu-img --version | head -1); kernel $(uname -r); $(nproc) CPUs; work dir $work"
note "bench-images: runs: prepare-image $RUNS_PI, $( ((DO_VC)) && echo "virt-customize $RUNS_VC" || echo "virt-customize skipped"), bare $RUNS_BARE"
note "bench-images: load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

if [[ $DO_WARMUP == 1 ]]; then
    note "warm-up (not timed):"
    vc_warm=0
    for index in "${!jobs[@]}"; do
        IFS='|' read -r _ method _ _ _ <<<"${jobs[$index]}"
        if [[ $method == virt-customize ]]; then
            # One is enough: it builds the appliance cache all share.
            ((vc_warm)) && continue
            vc_warm=1
        fi
        one_run "$index" 0
    done
fi

max_runs=0
for job in "${jobs[@]}"; do
    runs=${job##*|}
    if ((runs > max_runs)); then max_runs=$runs; fi
done
for ((round = 1; round <= max_runs; round++)); do
    note "round $round/$max_runs:"
    for index in "${!jobs[@]}"; do
        runs=${jobs[$index]##*|}
        if ((round <= runs)); then one_run "$index" 1; fi
    done
done

# ---------------------------------------------------------------- report ---

note "bench-images: load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# stats JOBINDEX -> "n median min max" in ms
stats() {
    sort -n "$work/times/job$1" | awk '
        { v[NR] = $1 }
        END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%d %.1f %.1f %.1f\n", NR, m / 1000, v[1] / 1000, v[NR] / 1000
        }'
}

declare -A median
printf '\n%-12s %-15s %5s %11s %11s %11s\n' image method runs "median ms" "min ms" "max ms"
for index in "${!jobs[@]}"; do
    IFS='|' read -r label method _ _ _ <<<"${jobs[$index]}"
    read -r n med min max < <(stats "$index")
    median["$label|$method"]=$med
    printf '%-12s %-15s %5d %11.1f %11.1f %11.1f\n' "$label" "$method" "$n" "$med" "$min" "$max"
done

printf '\nratios of medians:\n'
for label in "2 GiB raw" "2 GiB qcow2" "50 GiB raw"; do
    pi=${median["$label|prepare-image"]:-}
    [[ -n $pi ]] || continue
    vc=${median["$label|virt-customize"]:-}
    bare=${median["$label|bare"]:-}
    line=$(printf '%-12s' "$label")
    if [[ -n $vc ]]; then
        line+=$(awk -v a="$pi" -v b="$vc" 'BEGIN { printf "  prepare-image/virt-customize %.4f (%.0fx faster)", a / b, b / a }')
    fi
    if [[ -n $bare ]]; then
        line+=$(awk -v a="$pi" -v b="$bare" 'BEGIN { printf "  prepare-image/bare %.2f (%s)", a / b, (a / b <= 1.5) ? "within the 1.5x goal" : "ABOVE the 1.5x goal" }')
    fi
    printf '%s\n' "$line"
    # PAIR:GOAL; the user-space reads aim at under half the floor.
    for pair in doctor/bare-ro:1.5 clean/bare-clean:1.5 status/bare-ro:0.5 \
        status-user/bare-ro:0.5 check-user/bare-ro:0.5 \
        status/bare:0.5 status-user/bare:0.5 check-user/bare:0.5; do
        goal=${pair#*:}
        pair=${pair%:*}
        [[ $label == *qcow2* || ${pair#*/} != bare ]] || continue
        a=${median["$label|${pair%/*}"]:-}
        b=${median["$label|${pair#*/}"]:-}
        [[ -n $a && -n $b ]] || continue
        awk -v a="$a" -v b="$b" -v g="$goal" -v label="$label" -v pair="$pair" \
            'BEGIN { printf "%-12s  %s %.2f (%s %sx goal)\n", label, pair, a / b, (a / b <= g) ? "within the" : "ABOVE the", g }'
    done
    # The rootless rows without setpriv's own cost (measured on the 2 GiB raw image).
    wrapper=${median["2 GiB raw|setpriv"]:-}
    [[ -n $wrapper ]] || continue
    for row in status-user check-user; do
        a=${median["$label|$row"]:-}
        [[ $label == *qcow2* ]] && b=${median["$label|bare"]:-} floor=bare || b=${median["$label|bare-ro"]:-} floor=bare-ro
        [[ -n $a && -n $b ]] || continue
        awk -v a="$a" -v w="$wrapper" -v b="$b" -v label="$label" -v row="$row" -v floor="$floor" \
            'BEGIN { r = (a - w) / b; printf "%-12s  (%s - setpriv)/%s %.2f (%s 0.5x goal)\n", label, row, floor, r, (r <= 0.5) ? "within the" : "ABOVE the" }'
    done
done
