#!/usr/bin/env bash
# End-to-end proof on the real cloud-init (issue 4): boot a Debian bookworm
# guest whose image carries its own settings, give it the cloud's first-boot
# data on a NoCloud seed disk, and read back which settings survived.
#
#   boot control    no prepare-image            every setting overwritten
#   boot all        prepare-image --keep all    every setting kept
#   boot hostdns    --keep hostname,dns         those two kept, six overwritten
#   boot rootuser   --keep all, on the image with Tencent's default user
#                   (root) instead of Debian's: shows what the keys keep
#                   really rests on (see EXPECT in evaluate.py)
#
# Everything else the boots show (cloud-init status, failing modules, host
# keys, deferred write_files, ...) is reported and checked against EXPECT in
# evaluate.py. See README.md beside this file.
#
# Needs root, debootstrap, qemu-system-x86_64, sfdisk, mkfs.ext4, mkfs.vfat,
# mcopy, zstd, python3 (.ci/run installs them). Environment:
#   XDG_CACHE_HOME        the rootfs tarball is cached under
#                         ${XDG_CACHE_HOME:-$HOME/.cache}/prepare-image-e2e/
#   E2E_MIRROR            Debian mirror (default: the one this machine's apt
#                         sources name for bookworm, scripts/apt-mirror.sh)
#   E2E_ACCEL             kvm|tcg: skip the KVM probe
#   E2E_BOOT_TIMEOUT      seconds before a boot is killed (default 420)
#   E2E_KEEP_WORK=1       keep the work directory (images, logs) afterwards
#   E2E_BOOTS             space-separated subset of "control all hostdns rootuser"
#   PREPARE_IMAGE         the binary to test (default: cargo build --release)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
GUEST=$HERE/guest
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/prepare-image-e2e
MIRROR=${E2E_MIRROR:-$("$REPO/scripts/apt-mirror.sh" bookworm)}
SUITE=bookworm
BOOT_TIMEOUT=${E2E_BOOT_TIMEOUT:-420}
KVM_PROBE_TIMEOUT=10
BOOTS=${E2E_BOOTS:-control all hostdns rootuser}
# Direct kernel boot; net.ifnames=0 makes the NIC eth0, the name both the
# image's and the cloud's network configs match.
ROOT_PARTUUID=6b1d7e2a-3c4f-4e5a-9b8c-0d1e2f3a4b5c
KERNEL_CMDLINE="root=PARTUUID=$ROOT_PARTUUID rw console=ttyS0,115200 net.ifnames=0 quiet systemd.show_status=false"
GUEST_MAC=52:54:00:e2:e0:01
# The qemu user network lives in TEST-NET-1 and is restricted: no packet
# leaves qemu (no routing to the host or beyond, no forwarding).
QEMU_NET="user,restrict=on,net=192.0.2.0/24,host=192.0.2.2,model=virtio-net-pci,mac=$GUEST_MAC"

# The guest's packages. The cache key is a hash of this list (and the suite,
# the mirror and RECIPE), so changing any of them rebuilds the tarball.
GUEST_PACKAGES=(
    systemd-sysv          # init
    udev                  # /dev/disk/by-*, the cidata seed disk by label
    cloud-init            # 22.4.x in bookworm: the thing under test
    linux-image-amd64     # kernel + initrd for direct kernel boot
    initramfs-tools
    openssh-server        # the ssh module (host keys, authorized_keys)
    chrony                # cloud-init's ntp module writes /etc/chrony/chrony.conf on Debian
    iproute2              # ip: the report reads the addresses; networkd is in systemd
)
RECIPE=1  # bump when build_rootfs changes in a way the package list does not show

log() { printf '%s\n' "$*" >&2; }
die() { log "e2e: error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, loop devices for prepare-image)"
for tool in debootstrap qemu-system-x86_64 sfdisk mkfs.ext4 mkfs.vfat mcopy zstd tar unshare systemctl; do
    command -v "$tool" >/dev/null || die "$tool not found (see .ci/run for the packages)"
done
PY=/usr/bin/python3
[ -x "$PY" ] || die "/usr/bin/python3 not found"

# ---------------------------------------------------------------- timings --
declare -a TIMINGS=()
STAGE_NAME=""
STAGE_T0=0
now() { date +%s.%N; }
stage_begin() { STAGE_NAME=$1; STAGE_T0=$(now); log "== $1"; }
stage_end() {
    local dt
    dt=$(awk -v a="$STAGE_T0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    TIMINGS+=("$(printf '%-34s %7ss' "$STAGE_NAME" "$dt")")
    log "== $STAGE_NAME: ${dt}s"
}

# ---------------------------------------------------------------- cleanup --
# Only what this run started or attached is released: qemu PIDs we spawned,
# loop devices whose backing file lies in our work directory (prepare-image
# attaches and detaches its own; this is a check, and a last resort), mounts
# under our work directory (none are made in this namespace: debootstrap and
# the chroot run in a private mount namespace that dies with them).
WORK=""
BUILD_DIR=""
declare -a CHILD_PIDS=()
cleanup() {
    local rc=$?
    set +e
    local pid
    for pid in "${CHILD_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "e2e: cleanup: killing qemu pid $pid"
            kill "$pid" 2>/dev/null; sleep 1; kill -9 "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    if [ -n "$BUILD_DIR" ] && [ -d "$BUILD_DIR" ]; then
        rm -rf --one-file-system "$BUILD_DIR" "$BUILD_DIR".*.log
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        local m dev
        # Deepest first.
        findmnt -rn -o TARGET | grep -F "$WORK" | sort -r | while read -r m; do
            log "e2e: cleanup: unmounting $m"; umount -l "$m"
        done
        losetup -n -O NAME,BACK-FILE -l 2>/dev/null | while read -r dev m; do
            case "$m" in "$WORK"/*)
                log "e2e: cleanup: detaching $dev ($m)"; losetup -d "$dev";;
            esac
        done
        if [ "${E2E_KEEP_WORK:-0}" = 1 ]; then
            log "e2e: work directory kept: $WORK"
        else
            rm -rf --one-file-system "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ------------------------------------------------------------- the rootfs --
cache_key() {
    printf '%s\n' "suite=$SUITE" "mirror=$MIRROR" "recipe=$RECIPE" "${GUEST_PACKAGES[@]}" \
        | sha256sum | cut -c1-16
}

# debootstrap --variant=minbase, then the packages installed with apt in a
# chroot, all inside a private mount namespace: the proc/sys/dev mounts die
# with it whatever happens. No service starts (policy-rc.d).
build_rootfs() {
    local tarball=$1 dir
    dir=$(mktemp -d "$CACHE/build.XXXXXX")
    BUILD_DIR=$dir
    chmod 755 "$dir"  # apt in the chroot downloads as _apt
    # shellcheck disable=SC2016
    unshare --mount --propagation private -- /bin/bash -euo pipefail -c '
        dir=$1; suite=$2; mirror=$3; shift 3
        debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$dir.debootstrap.log" 2>&1 || {
            tail -n 30 "$dir.debootstrap.log" >&2; exit 1; }
        mount -t proc proc "$dir/proc"
        mount -t sysfs sysfs "$dir/sys"
        mount --rbind /dev "$dir/dev"
        printf "#!/bin/sh\nexit 101\n" >"$dir/usr/sbin/policy-rc.d"
        chmod 755 "$dir/usr/sbin/policy-rc.d"
        chroot "$dir" apt-get -q update >/dev/null
        chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
            --no-install-recommends install "$@" >"$dir.apt.log" 2>&1 || {
            tail -n 30 "$dir.apt.log" >&2; exit 1; }
        chroot "$dir" apt-get clean
        rm -f "$dir/usr/sbin/policy-rc.d"
        rm -rf "$dir"/var/lib/apt/lists/* "$dir"/tmp/* "$dir"/var/log/*.log
    ' e2e-rootfs "$dir" "$SUITE" "$MIRROR" "${GUEST_PACKAGES[@]}"
    rm -f "$dir.debootstrap.log" "$dir.apt.log"
    tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$dir" -cf - . \
        | zstd -q -T0 -3 -o "$tarball.part"
    mv "$tarball.part" "$tarball"
    rm -rf --one-file-system "$dir"
    BUILD_DIR=""
}

mkdir -p "$CACHE"
TARBALL=$CACHE/rootfs-$SUITE-$(cache_key).tar.zst
stage_begin "rootfs (debootstrap + apt)"
if [ -s "$TARBALL" ]; then
    log "e2e: cached rootfs: $TARBALL"
    STAGE_NAME="rootfs (cached)"
else
    # Older tarballs for other package lists go: one cache entry at a time.
    rm -f "$CACHE"/rootfs-*.tar.zst "$CACHE"/rootfs-*.tar.zst.part
    rm -rf --one-file-system "$CACHE"/build.*
    build_rootfs "$TARBALL"
    log "e2e: built $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi
stage_end
if [ "${1:-}" = --rootfs-only ]; then
    printf '%s\n' "${TIMINGS[@]}"
    exit 0
fi

# --------------------------------------------------------- the disk image --
WORK=$(mktemp -d /var/tmp/prepare-image-e2e.XXXXXX)
log "e2e: work directory $WORK"

stage_begin "build prepare-image"
if [ -z "${PREPARE_IMAGE:-}" ]; then
    (cd "$REPO" && cargo build --release --locked --quiet)
    PREPARE_IMAGE=$REPO/target/release/prepare-image
fi
[ -x "$PREPARE_IMAGE" ] || die "$PREPARE_IMAGE is not executable"
stage_end

# shellcheck disable=SC2016  # a crypt(3) hash, not an expansion
IMAGE_SHADOW_HASH='$6$e2eimagesalt$dFdpIQALFg996WebisNjaoJaZenoQCBSetqmVJbZ8NaRv2X66Ri95.PxQJWyFldACh7AD6UpjYZGixKzoD5yD1'
ROOT_FS_MIB=2048
PART_START_SECTOR=2048   # 1 MiB

# The guest root: the cached packages, then the image's own settings (the
# files under guest/image, a root password hash, networkd on), the
# Tencent-style cloud.cfg and the report unit.
customize_root() {
    local root=$1
    cp -a "$GUEST/image/." "$root/"
    chown -R 0:0 "$root/root/.ssh" "$root/etc/systemd/network"
    chmod 700 "$root/root/.ssh"
    chmod 600 "$root/root/.ssh/authorized_keys"
    # The root password hash (the image's password is "image-password").
    awk -F: -v OFS=: -v h="$IMAGE_SHADOW_HASH" '$1 == "root" { $2 = h } { print }' \
        "$root/etc/shadow" >"$root/etc/shadow.e2e"
    cat "$root/etc/shadow.e2e" >"$root/etc/shadow"
    rm "$root/etc/shadow.e2e"
    grep -q "^root:$IMAGE_SHADOW_HASH:" "$root/etc/shadow" || die "setting root's hash failed"
    install -m 644 "$GUEST/cloud.cfg" "$root/etc/cloud/cloud.cfg"
    # Debian's debconf drop-in would decide datasource_list; cloud.cfg does here.
    rm -f "$root/etc/cloud/cloud.cfg.d/90_dpkg.cfg"
    install -m 755 "$GUEST/e2e-report" "$root/usr/local/sbin/e2e-report"
    install -m 644 "$GUEST/e2e-report.service" "$root/etc/systemd/system/e2e-report.service"
    printf 'LABEL=e2eroot / ext4 rw,errors=remount-ro 0 1\n' >"$root/etc/fstab"
    systemctl --root="$root" --quiet enable systemd-networkd.service e2e-report.service
    # Nothing in the guest may wait for the clock or the package archive.
    systemctl --root="$root" --quiet mask apt-daily.timer apt-daily-upgrade.timer \
        e2scrub_all.timer fstrim.timer 2>/dev/null || true
}

stage_begin "image build (rootfs, GPT disk, seed)"
ROOT=$WORK/root
mkdir "$ROOT"
zstd -q -dc "$TARBALL" | tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$ROOT" -xf -
customize_root "$ROOT"
KERNEL=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n 1)
INITRD=$ROOT/boot/initrd.img-${KERNEL##*/vmlinuz-}
if [ ! -f "$KERNEL" ] || [ ! -f "$INITRD" ]; then
    die "no kernel/initrd in the guest's /boot"
fi
cp "$KERNEL" "$WORK/vmlinuz"
cp "$INITRD" "$WORK/initrd.img"
# The image's host public keys, to tell whether the boot regenerated them.
cat "$ROOT"/etc/ssh/ssh_host_*_key.pub >"$WORK/image-host-keys.pub"

# A GPT disk with one partition holding an ext4 filesystem made from $1.
make_disk() {
    local root=$1 disk=$2
    mkfs.ext4 -q -F -L e2eroot -d "$root" "$disk.ext4" "${ROOT_FS_MIB}M" >/dev/null
    truncate -s $(( (ROOT_FS_MIB + 2) * 1024 * 1024 )) "$disk"
    sfdisk --quiet "$disk" <<SFDISK
label: gpt
start=$PART_START_SECTOR, size=$(( ROOT_FS_MIB * 2048 )), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_PARTUUID, name=root
SFDISK
    dd if="$disk.ext4" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
    rm "$disk.ext4"
}
make_disk "$ROOT" "$WORK/base.raw"
# The same image with the default user of Tencent Cloud's own cloud.cfg
# (root, password not locked) instead of Debian's `debian`.
sed -i -e 's/^    name: debian$/    name: root/' -e 's/^    lock_passwd: true$/    lock_passwd: false/' \
    -e 's/^    gecos: Debian$/    gecos: Cloud User/' "$ROOT/etc/cloud/cloud.cfg"
grep -q '^    name: root$' "$ROOT/etc/cloud/cloud.cfg" || die "default_user root: cloud.cfg not as expected"
make_disk "$ROOT" "$WORK/base-rootuser.raw"
rm -rf --one-file-system "$ROOT"

# The NoCloud seed disk: a FAT filesystem labelled cidata, filled with mtools
# (no mount).
SEED=$WORK/seed.img
truncate -s 4M "$SEED"
mkfs.vfat -n cidata "$SEED" >/dev/null 2>&1 || die "mkfs.vfat $SEED failed"
for f in meta-data user-data vendor-data network-config; do
    mcopy -i "$SEED" "$GUEST/seed/$f" "::$f"
done
stage_end

# ------------------------------------------------------------------ boots --
QEMU_COMMON=(
    -nodefaults -no-user-config -display none -monitor none
    -machine q35 -m 1024 -smp 2
    -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img"
    -device virtio-rng-pci
)

# Start qemu in the background, remember its PID, wait for it at most
# $1 seconds; kill exactly that PID when the time is up. Returns 0 when qemu
# exited by itself, 124 on timeout.
run_qemu() {
    local timeout=$1; shift
    qemu-system-x86_64 "$@" &
    local pid=$! t=0
    CHILD_PIDS+=("$pid")
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$t" -ge $(( timeout * 10 )) ]; then
            log "e2e: qemu pid $pid still running after ${timeout}s: killing it"
            kill "$pid" 2>/dev/null || true
            sleep 2
            kill -9 "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            return 124
        fi
        sleep 0.1
        t=$(( t + 1 ))
    done
    wait "$pid" || log "e2e: qemu pid $pid exited with status $?"
    return 0
}

# /dev/kvm exists here but may be a nested implementation on which the
# Debian kernel hangs: boot the guest kernel with no root filesystem under
# KVM; a working KVM reaches the "VFS: Unable to mount root" panic, reboots
# (panic=-1) and qemu exits (-no-reboot) within seconds.
ACCEL=${E2E_ACCEL:-}
stage_begin "KVM probe"
if [ -z "$ACCEL" ]; then
    ACCEL=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        if run_qemu "$KVM_PROBE_TIMEOUT" -accel kvm -nodefaults -no-user-config -display none \
                -monitor none -m 256 -no-reboot -kernel "$WORK/vmlinuz" \
                -append "console=ttyS0 panic=-1" -serial "file:$WORK/kvm-probe.log" \
                2>"$WORK/kvm-probe.err" \
            && grep -q "Kernel panic" "$WORK/kvm-probe.log"; then
            ACCEL=kvm
        fi
    fi
fi
if [ -z "${E2E_ACCEL:-}" ] && [ "$ACCEL" = tcg ]; then
    log "e2e: KVM unusable: the guest kernel did not reach its no-root panic within ${KVM_PROBE_TIMEOUT}s ($(wc -c <"$WORK/kvm-probe.log" 2>/dev/null || echo 0) bytes of console output)"
fi
log "e2e: accelerator: $ACCEL"
STAGE_NAME="KVM probe (-> $ACCEL)"
stage_end

accel_args() {
    case "$1" in
        kvm) echo "-accel kvm";;
        *) echo "-accel tcg";;
    esac
}

# Each boot: the keep list given to prepare-image ("" = not run) and the
# base image it copies.
declare -A BOOT_KEEP=([control]="" [all]="all" [hostdns]="hostname,dns" [rootuser]="all")
declare -A BOOT_BASE=([control]=base [all]=base [hostdns]=base [rootuser]=base-rootuser)
FAILED=()
PASSED=()

boot() {
    local name=$1 keep=${BOOT_KEEP[$1]} img=$WORK/$1.raw accel=$ACCEL rc
    local base=$WORK/${BOOT_BASE[$1]}.raw
    stage_begin "boot $name${keep:+ (--keep $keep)}"
    cp --sparse=always "$base" "$img"
    if [ -n "$keep" ]; then
        if ! "$PREPARE_IMAGE" --keep "$keep" "$img" >"$WORK/$name.diff" 2>"$WORK/$name.prepare.log"; then
            cat "$WORK/$name.prepare.log" >&2
            die "prepare-image --keep $keep $img failed"
        fi
        grep '^warning:' "$WORK/$name.prepare.log" | sed 's/^/    prepare-image: /' >&2 || true
    fi
    local attempt
    for attempt in 1 2; do
        rm -f "$WORK/$name.console.log" "$WORK/$name.report.log"
        rc=0
        # shellcheck disable=SC2046
        run_qemu "$BOOT_TIMEOUT" "${QEMU_COMMON[@]}" $(accel_args "$accel") \
            -append "$KERNEL_CMDLINE" \
            -drive "file=$img,format=raw,if=virtio,cache=unsafe" \
            -drive "file=$SEED,format=raw,if=virtio,readonly=on" \
            -nic "$QEMU_NET" \
            -serial "file:$WORK/$name.console.log" \
            -serial "file:$WORK/$name.report.log" || rc=$?
        if grep -q '===E2E-REPORT-END===' "$WORK/$name.report.log" 2>/dev/null; then
            break
        fi
        if [ "$accel" = kvm ] && [ "$attempt" = 1 ]; then
            log "e2e: no report under KVM (rc $rc): booting $name again under TCG"
            ACCEL=tcg accel=tcg
            cp --sparse=always "$base" "$img"
            if [ -n "$keep" ] && ! "$PREPARE_IMAGE" --keep "$keep" "$img" >/dev/null 2>&1; then
                die "prepare-image --keep $keep $img failed (retry under TCG)"
            fi
            continue
        fi
        log "e2e: boot $name gave no report (rc $rc); last console lines:"
        tail -n 40 "$WORK/$name.console.log" >&2 || true
        FAILED+=("boot $name: no report")
        stage_end
        return 0
    done
    stage_end
    rm -f "$img"
    local out
    if out=$("$PY" "$HERE/evaluate.py" --boot "$name" --guest "$GUEST" \
            --image-host-keys "$WORK/image-host-keys.pub" \
            --report "$WORK/$name.report.log" --json-out "$WORK/$name.report.json" \
            --summary-out "$WORK/$name.summary.json"); then
        PASSED+=("$name")
    else
        FAILED+=("boot $name: expectations not met")
    fi
    printf '%s\n' "$out"
}

for b in $BOOTS; do
    [ -n "${BOOT_KEEP[$b]+x}" ] || die "unknown boot $b (control, all, hostdns, rootuser)"
    boot "$b"
done

# -------------------------------------------------------- nothing behind --
for pid in "${CHILD_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then FAILED+=("qemu pid $pid still running"); fi
done
if losetup -n -O BACK-FILE -l 2>/dev/null | grep -qF "$WORK/"; then
    FAILED+=("a loop device is still attached to a file in $WORK")
fi
if findmnt -rn -o TARGET | grep -qF "$WORK"; then
    FAILED+=("a mount is left under $WORK")
fi

summaries=()
for b in $BOOTS; do
    [ -f "$WORK/$b.summary.json" ] && summaries+=("$WORK/$b.summary.json")
done
if [ "${#summaries[@]}" -gt 0 ]; then
    printf '\n== per-setting table\n'
    "$PY" "$HERE/evaluate.py" --table "${summaries[@]}"
fi
printf '\n== timings\n'
printf '%s\n' "${TIMINGS[@]}"
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf '\ne2e: FAILED:\n'
    printf '  %s\n' "${FAILED[@]}"
    rm -f "$WORK"/*.raw
    E2E_KEEP_WORK=1
    printf 'e2e: %d passed, %d failed\n' "${#PASSED[@]}" "${#FAILED[@]}"
    exit 1
fi
printf 'e2e: %d passed, %d failed\n' "${#PASSED[@]}" 0
