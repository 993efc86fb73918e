#!/usr/bin/env bash
# End-to-end proof on the real cloud-init (issues 4, 9, 12): boot a Debian
# guest whose image carries its own settings, give it the cloud's first-boot
# data on a seed disk, and read back which settings survived. One guest per
# Debian release with its own cloud-init (bullseye 20.4, bookworm 22.4,
# trixie 25.1, forky 26.x); the seed is ConfigDrive (label config-2, as
# Tencent Cloud's) on every release, and NoCloud on bookworm too.
#
#   boot control    no prepare-image            every setting overwritten
#   boot all        prepare-image --keep all    every setting kept
#   boot hostdns    --keep hostname,dns         those two kept, six overwritten
#   boot rootuser   --keep all, on the image with Tencent's default user
#                   (root) instead of Debian's: shows what the keys keep
#                   really rests on (see EXPECT in evaluate.py)
#   boot FAULT, FAULT-fixed
#                   issue 9: an image with one fault of the cloud's guide
#                   (nopyyaml, shebang, disabled, masked, leftovers), then
#                   the same after the fix; `prepare-image doctor` is run on
#                   each image first (read-only: its sha256 must not change),
#                   and its verdict must agree with the boot (DOCTOR_ROWS in
#                   evaluate.py)
#   (the above through NoCloud, bookworm only)
#   boot cd-control, cd-all, cd-hostdns
#                   the same keeps through ConfigDrive, on every release
#   boot cd-keep-PROFILE
#                   each profile alone, on the newest release
#
# Before each keep boot `prepare-image status --format json` reads the image;
# its kept/overwritten per setting must equal the boot's. Everything else
# the boots show (cloud-init status, failing modules, host keys, deferred
# write_files, ...) is reported and checked against EXPECT in evaluate.py,
# and RELEASE_EFFECTS / RELEASE_GAPS there say where a release differs.
# See README.md beside this file.
#
# Needs root, debootstrap, qemu-system-x86_64, sfdisk, mkfs.ext4, debugfs, mkfs.vfat,
# mcopy, mmd, zstd, python3 (.ci/run installs them). Environment:
#   E2E_RELEASES          releases of a matrix run (default: bullseye bookworm
#                         trixie forky), run at once, sharing the guest slots
#   E2E_RELEASE           run one release only (what the matrix run does for each)
#   XDG_CACHE_HOME        the rootfs tarballs are cached under
#                         ${XDG_CACHE_HOME:-$HOME/.cache}/prepare-image-e2e/
#   E2E_MIRROR            Debian mirror (default: the one this machine's apt
#                         sources name for bookworm, scripts/apt-mirror.sh)
#   E2E_ACCEL             kvm|tcg: skip the KVM probe
#   E2E_BOOT_TIMEOUT      seconds before a boot is killed (default 900)
#   E2E_KEEP_WORK=1       keep the work directory (images, logs) afterwards
#   E2E_BOOTS             space-separated subset of the boots, by name (every
#                         release that has it) or RELEASE:NAME (leftovers and
#                         leftovers-fixed add control: they start from its disk)
#   E2E_PARALLEL          guests booted at once (default 2, one vCPU each)
#   PREPARE_IMAGE         the binary to test (default: cargo build --release)
# `run.sh --rootfs-only` with E2E_RELEASE builds (or finds) that release's
# rootfs tarball and stops.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
GUEST=$HERE/guest
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/prepare-image-e2e
# The Debian release of the guest (issue 12: one per cloud-init release).
SUITE=${E2E_RELEASE:-bookworm}
# Debian's archive carries every release: the URI this machine's apt uses
# for bookworm serves them all.
MIRROR=${E2E_MIRROR:-$("$REPO/scripts/apt-mirror.sh" bookworm)}
# forky (testing): this debootstrap has no script of its name; sid's
# bootstraps it. Its archive snapshot can be older than its Release file's
# Valid-Until, which apt then refuses unless told.
DEBOOTSTRAP_SCRIPT=""
NO_VALID_UNTIL=0
case "$SUITE" in
    bullseye|bookworm|trixie) ;;
    forky) DEBOOTSTRAP_SCRIPT=/usr/share/debootstrap/scripts/sid
           NO_VALID_UNTIL=1;;
    *) printf 'e2e: error: E2E_RELEASE=%s: one of bullseye bookworm trixie forky\n' "$SUITE" >&2; exit 2;;
esac
# forky's guest reaches its report after 450+ s under TCG on a loaded machine.
BOOT_TIMEOUT=${E2E_BOOT_TIMEOUT:-900}
KVM_PROBE_TIMEOUT=10
# The boots of issue 4 (the keeps) and of issue 9 (doctor: each fault as it
# is and after its fix, see DOCTOR_ROWS in evaluate.py), fed through NoCloud:
# bookworm only.
NOCLOUD_BOOTS="control all hostdns rootuser nopyyaml nopyyaml-fixed shebang shebang-fixed
    disabled disabled-fixed masked masked-fixed leftovers leftovers-fixed"
# Issue 12: the keeps through ConfigDrive (Tencent Cloud's datasource) on
# every release; on the newest, each profile alone as well (cd-keep-NAME).
PROFILES="hostname hosts dns repos ntp passwords keys network"
CD_BOOTS="cd-control cd-all cd-hostdns"
NEWEST_RELEASE=forky
case "$SUITE" in
    bookworm) ALL_BOOTS="$NOCLOUD_BOOTS $CD_BOOTS";;
    "$NEWEST_RELEASE") ALL_BOOTS="$CD_BOOTS $(printf 'cd-keep-%s ' $PROFILES)";;
    *) ALL_BOOTS=$CD_BOOTS;;
esac
# Booted only when E2E_BOOTS names them: on bookworm, cd-all and cd-hostdns
# prove the same keeps on the same cloud-init through ConfigDrive, and
# NoCloud stays proven by control, rootuser and the doctor boots. Leaving
# them out keeps the cold run inside CI's time.
BY_NAME_ONLY=" all hostdns "
# The order they start in: the long control boot first (the leftovers boots
# start from its disk), the doctor's broken images next.
START_ORDER="control nopyyaml shebang disabled masked leftovers nopyyaml-fixed shebang-fixed
    disabled-fixed masked-fixed leftovers-fixed all hostdns rootuser $CD_BOOTS
    $(printf 'cd-keep-%s ' $PROFILES)"
# E2E_BOOTS: names (every release that has the boot) or RELEASE:NAME.
if [ -n "${E2E_BOOTS:-}" ]; then
    BOOTS=""
    for b in $E2E_BOOTS; do
        case "$b" in
            *:*) [ "${b%%:*}" = "$SUITE" ] || continue; b=${b#*:};;
        esac
        case " $(echo $ALL_BOOTS) " in
            *" $b "*) BOOTS="$BOOTS $b";;
        esac
    done
    BOOTS=$(echo $BOOTS)
else
    BOOTS=""
    for b in $ALL_BOOTS; do
        case "$BY_NAME_ONLY" in *" $b "*) continue;; esac
        BOOTS="$BOOTS $b"
    done
    BOOTS=$(echo $BOOTS)
fi
if [ -n "${E2E_RELEASE:-}" ] && [ -z "$BOOTS" ] && [ "${1:-}" != --rootfs-only ]; then
    printf 'e2e: %s: none of E2E_BOOTS (%s) is a boot of this release\n' "$SUITE" "$E2E_BOOTS" >&2
    exit 0
fi
# The leftovers are the control boot's own: it runs first.
case " $BOOTS " in
    *" control "*) ;;
    *" leftovers "*|*" leftovers-fixed "*) BOOTS="control $BOOTS";;
esac
# Guests booted at once, each on one virtual CPU.
PARALLEL=${E2E_PARALLEL:-2}
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
# cloud-init 20.4 (bullseye) has no networkd renderer (21.x added it): it
# renders for networkd through netplan (see customize_root).
if [ "$SUITE" = bullseye ]; then GUEST_PACKAGES+=(netplan.io); fi
# resize2fs for cloud-init's resizefs: e2fsprogs is no longer in
# debootstrap's minbase from trixie on, and without it resizefs fails and
# with it the whole boot (status error, every cloud-init unit failed).
case "$SUITE" in trixie|forky) GUEST_PACKAGES+=(e2fsprogs);; esac
RECIPE=1  # bump when build_rootfs changes in a way the package list does not show

log() { printf '%s\n' "$*" >&2; }
die() { log "e2e: error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, loop devices for prepare-image)"
for tool in debootstrap qemu-system-x86_64 sfdisk mkfs.ext4 debugfs mkfs.vfat mcopy mmd zstd tar unshare systemctl sha256sum; do
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
declare -a RELEASE_PIDS=()
SHARED_OWN=""
cleanup() {
    local rc=$?
    set +e
    local pid
    # The matrix: each release's run (their own traps stop their guests).
    for pid in "${RELEASE_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "e2e: cleanup: stopping release run pid $pid"
            kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
        fi
    done
    if [ -n "$SHARED_OWN" ] && [ -d "$SHARED_OWN" ]; then
        if [ "${E2E_KEEP_WORK:-0}" = 1 ]; then
            log "e2e: matrix directory kept: $SHARED_OWN"
        else
            rm -rf --one-file-system "$SHARED_OWN"
        fi
    fi
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

# ---------------------------------------------------------------- matrix --
# Without E2E_RELEASE the script runs itself once per release of
# E2E_RELEASES, all at once: a release still bootstrapping its rootfs
# overlaps the others' image builds and boots. They share one prepare-image
# build, one KVM probe and E2E_PARALLEL guest slots (lock files in the
# shared directory, held by each qemu), then the table release x boot x
# setting is printed.
run_matrix() {
    local releases=${E2E_RELEASES:-bullseye bookworm trixie forky} r pid rc failed=()
    SHARED_OWN=$(mktemp -d /var/tmp/prepare-image-e2e-matrix.XXXXXX)
    mkdir "$SHARED_OWN/summaries"
    local t0=$SECONDS
    stage_begin "build prepare-image"
    if [ -z "${PREPARE_IMAGE:-}" ]; then
        (cd "$REPO" && cargo build --release --locked --quiet)
        PREPARE_IMAGE=${CARGO_TARGET_DIR:-$REPO/target}/release/prepare-image
    fi
    [ -x "$PREPARE_IMAGE" ] || die "$PREPARE_IMAGE is not executable"
    export PREPARE_IMAGE
    stage_end
    stage_begin "releases ($releases)"
    declare -A pid_of=()
    for r in $releases; do
        E2E_RELEASE=$r E2E_SHARED=$SHARED_OWN bash "$HERE/run.sh" \
            > >(sed -u "s/^/[$r] /") 2>&1 &
        pid_of[$r]=$!
        RELEASE_PIDS+=("$!")
    done
    for r in $releases; do
        rc=0
        wait "${pid_of[$r]}" || rc=$?
        [ "$rc" = 0 ] || failed+=("$r (exit $rc)")
    done
    RELEASE_PIDS=()
    stage_end
    sleep 0.5  # the prefixing seds drain
    printf '\n== release x boot x setting\n'
    "$PY" "$HERE/evaluate.py" --matrix-table "$SHARED_OWN"/summaries/*.json || failed+=("matrix table")
    printf '\n== timings (matrix)\n'
    printf '%s\n' "${TIMINGS[@]}"
    printf '%-34s %7ss\n' "e2e total" "$(( SECONDS - t0 ))"
    if [ "${#failed[@]}" -gt 0 ]; then
        printf 'e2e: FAILED: %s\n' "${failed[*]}"
        return 1
    fi
    printf 'e2e: every release passed: %s\n' "$releases"
}
if [ -z "${E2E_RELEASE:-}" ]; then
    run_matrix
    exit
fi

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
    dir=$(mktemp -d "$CACHE/build-$SUITE.XXXXXX")
    BUILD_DIR=$dir
    chmod 755 "$dir"  # apt in the chroot downloads as _apt
    # shellcheck disable=SC2016
    unshare --mount --propagation private -- /bin/bash -euo pipefail -c '
        dir=$1; suite=$2; mirror=$3; script=$4; no_valid_until=$5; shift 5
        debootstrap --variant=minbase "$suite" "$dir" "$mirror" $script >"$dir.debootstrap.log" 2>&1 || {
            tail -n 30 "$dir.debootstrap.log" >&2; exit 1; }
        if [ "$no_valid_until" = 1 ]; then
            echo "Acquire::Check-Valid-Until \"false\";" >"$dir/etc/apt/apt.conf.d/99e2e-valid-until"
        fi
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
        rm -f "$dir/usr/sbin/policy-rc.d" "$dir/etc/apt/apt.conf.d/99e2e-valid-until"
        rm -rf "$dir"/var/lib/apt/lists/* "$dir"/tmp/* "$dir"/var/log/*.log
    ' e2e-rootfs "$dir" "$SUITE" "$MIRROR" "$DEBOOTSTRAP_SCRIPT" "$NO_VALID_UNTIL" "${GUEST_PACKAGES[@]}"
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
    # Older tarballs of this release for other package lists go: one cache
    # entry per release (the other releases' builds may be running).
    rm -f "$CACHE/rootfs-$SUITE"-*.tar.zst "$CACHE/rootfs-$SUITE"-*.tar.zst.part
    rm -rf --one-file-system "$CACHE/build-$SUITE".*
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
    PREPARE_IMAGE=${CARGO_TARGET_DIR:-$REPO/target}/release/prepare-image
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
    adapt_modules_to_release "$root"
    # bullseye's cloud-init 20.4 depends on ifupdown and renders ENI first,
    # which brings up nothing here (the image's network is networkd's); the
    # image picks netplan instead, whose networkd files in /run sort before
    # the image's own, as the networkd renderer's do on later releases.
    if [ "$SUITE" = bullseye ]; then
        printf '%s\n' "# e2e: bullseye renders the cloud's network through netplan (networkd)" \
            'system_info: {network: {renderers: [netplan]}}' >"$root/etc/cloud/cloud.cfg.d/50-e2e-netplan.cfg"
    fi
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
# guest/cloud.cfg lists the modules of Tencent's cloud.cfg that bookworm's
# cloud-init 22.4 has; other releases lack some (write-files-deferred came in
# 21.3; migrator, rightscale_userdata and others went later). An entry for a
# module the image's cloud-init does not have only makes it warn, so each
# release's image lists those it has: the drops are printed, and the README
# lists them per release.
adapt_modules_to_release() {
    local root=$1 pkg
    pkg=$(ls -d "$root"/usr/lib/python3/dist-packages/cloudinit/config 2>/dev/null) \
        || die "no cloudinit/config in the guest"
    # shellcheck disable=SC2016
    "$PY" - "$root/etc/cloud/cloud.cfg" "$pkg" "$SUITE" <<'PYTHON' >&2 || die "adapting cloud.cfg failed"
import pathlib, re, sys
cfg, pkg, suite = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
out, dropped, section = [], [], None
for line in cfg.read_text().splitlines(keepends=True):
    m = re.match(r"^([A-Za-z_]\w*):", line)
    if m:
        section = m.group(1)
    entry = re.match(r"^ - \[?'?([\w-]+)", line)
    if entry and section and section.endswith("_modules"):
        name = entry.group(1).replace("-", "_")
        if not (pkg / f"cc_{name}.py").exists():
            dropped.append(entry.group(1))
            continue
    out.append(line)
cfg.write_text("".join(out))
print(f"e2e: {suite}: cloud.cfg modules this cloud-init lacks, left out: {' '.join(dropped) or 'none'}")
PYTHON
}

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
wanted() { case " $BOOTS " in *" $1 "*) return 0;; esac; return 1; }
wanted_prefix() { case " $BOOTS " in *" $1"*) return 0;; esac; return 1; }

# The image for the ConfigDrive boots (issue 12): the datasource settings of
# Tencent Cloud's cloud.cfg (tencent-centos-rhel8.5.cfg) instead of NoCloud.
# Upstream cloud-init has no TencentCloud datasource (Tencent's images carry
# their own build): an unknown name in datasource_list is passed over.
if wanted_prefix cd-; then
    cp -p "$ROOT/etc/cloud/cloud.cfg" "$WORK/cloud.cfg.nocloud"
    # shellcheck disable=SC2016
    "$PY" - "$ROOT/etc/cloud/cloud.cfg" <<'PYTHON' || die "the ConfigDrive cloud.cfg: datasource_list not as expected"
import pathlib, sys
p = pathlib.Path(sys.argv[1])
old = "datasource_list: [ NoCloud, None ]\n"
new = ("datasource_list: [ ConfigDrive, TencentCloud ]\n"
       "datasource:\n  ConfigDrive:\n    dsmode: local\n")
text = p.read_text()
assert text.count(old) == 1
p.write_text(text.replace(old, new))
PYTHON
    make_disk "$ROOT" "$WORK/base-cd.raw"
    cat "$WORK/cloud.cfg.nocloud" >"$ROOT/etc/cloud/cloud.cfg"
fi
# The NoCloud image (bookworm's boots of issues 4 and 9).
if printf '%s\n' $BOOTS | grep -qv '^cd-'; then
    make_disk "$ROOT" "$WORK/base.raw"
fi

# The same image with the default user of Tencent Cloud's own cloud.cfg
# (root, password not locked) instead of Debian's `debian`.
if wanted rootuser; then
    cp -p "$ROOT/etc/cloud/cloud.cfg" "$WORK/cloud.cfg.debian"
    sed -i -e 's/^    name: debian$/    name: root/' -e 's/^    lock_passwd: true$/    lock_passwd: false/' \
        -e 's/^    gecos: Debian$/    gecos: Cloud User/' "$ROOT/etc/cloud/cloud.cfg"
    grep -q '^    name: root$' "$ROOT/etc/cloud/cloud.cfg" || die "default_user root: cloud.cfg not as expected"
    make_disk "$ROOT" "$WORK/base-rootuser.raw"
    cat "$WORK/cloud.cfg.debian" >"$ROOT/etc/cloud/cloud.cfg"
fi

# ------------------------------------------------- the doctor's variants --
# One image per fault of the cloud's guide (issue 9), made on the root tree
# as it happens on a builder's machine; `fix_*` makes the fix doctor names,
# the way a builder makes it on the build machine's tree, and leaves the tree
# as it was. The shebang and the previous instance are fixed by prepare-image
# itself, on the image file (BOOT_STEP below).

# Problem 1: python3-yaml's modules are gone while dpkg still lists the
# package (as after a `pip uninstall pyyaml`, or files deleted by hand): the
# state in which doctor's `apt-get install --reinstall python3-yaml` is the
# fix. The fix puts back the package's own files (what that reinstall writes;
# the test has no package archive once the rootfs is cached).
PYYAML_PATHS=(usr/lib/python3/dist-packages/yaml usr/lib/python3/dist-packages/_yaml)
break_nopyyaml() {
    local root=$1 p
    mkdir -p "$WORK/pyyaml-files"
    for p in "${PYYAML_PATHS[@]}" $(cd "$root" && ls -d usr/lib/python3/dist-packages/PyYAML-*); do
        [ -e "$root/$p" ] || die "python3-yaml: $p not in the guest"
        mkdir -p "$WORK/pyyaml-files/$(dirname "$p")"
        mv "$root/$p" "$WORK/pyyaml-files/$p"
    done
}
fix_nopyyaml() {
    cp -a "$WORK/pyyaml-files/." "$1/"
    rm -rf "$WORK/pyyaml-files"
}
# Problem 2: /usr/bin/cloud-init's shebang goes through /usr/bin/python, and
# that link now names a python2-named binary that is not the Python holding
# cloud-init (dash: it fails on the script's first lines, as a Python 2
# without cloud-init fails on its first import).
break_shebang() {
    local root=$1
    head -n 1 "$root/usr/bin/cloud-init" >"$WORK/cloud-init.shebang"
    grep -qx '#!/usr/bin/python3' "$WORK/cloud-init.shebang" || die "usr/bin/cloud-init: unexpected shebang"
    [ ! -e "$root/usr/bin/python" ] && [ ! -e "$root/usr/bin/python2.7" ] || die "the guest already has a python link"
    sed -i '1s|^#!.*|#!/usr/bin/python|' "$root/usr/bin/cloud-init"
    cp -p "$root/bin/dash" "$root/usr/bin/python2.7"
    ln -s python2.7 "$root/usr/bin/python"
}
unbreak_shebang() {
    local root=$1
    sed -i "1s|^#!.*|$(cat "$WORK/cloud-init.shebang")|" "$root/usr/bin/cloud-init"
    rm -f "$root/usr/bin/python" "$root/usr/bin/python2.7"
}
# cloud-init switched off by its marker file; the fix doctor names is rm.
break_disabled() { : >"$1/etc/cloud/cloud-init.disabled"; }
fix_disabled() { rm "$1/etc/cloud/cloud-init.disabled"; }
# The network stage's unit masked; the fix doctor names is systemctl unmask
# (--root: the same on the build machine's tree).
break_masked() { systemctl --root="$1" --quiet mask cloud-init.service; }
fix_masked() { systemctl --root="$1" --quiet unmask cloud-init.service; }

for v in nopyyaml disabled masked; do
    wanted "$v" || wanted "$v-fixed" || continue
    "break_$v" "$ROOT"
    if wanted "$v"; then make_disk "$ROOT" "$WORK/disk-$v.raw"; fi
    "fix_$v" "$ROOT"
    if wanted "$v-fixed"; then make_disk "$ROOT" "$WORK/disk-$v-fixed.raw"; fi
done
if wanted shebang || wanted shebang-fixed; then
    break_shebang "$ROOT"
    make_disk "$ROOT" "$WORK/disk-shebang.raw"
    unbreak_shebang "$ROOT"
fi
# The previous instance (leftovers) is the control boot's own /var/lib/cloud,
# put into the image once that boot is over (make_leftovers_disk): the state a
# builder captures after booting the build VM with the cloud's seed.
if ! wanted leftovers && ! wanted leftovers-fixed; then
    rm -rf --one-file-system "$ROOT"
fi

# The NoCloud seed disk: a FAT filesystem labelled cidata, filled with mtools
# (no mount).
SEED=$WORK/seed.img
truncate -s 4M "$SEED"
mkfs.vfat -n cidata "$SEED" >/dev/null 2>&1 || die "mkfs.vfat $SEED failed"
for f in meta-data user-data vendor-data network-config; do
    mcopy -i "$SEED" "$GUEST/seed/$f" "::$f"
done
# The ConfigDrive seed, as Tencent Cloud's: a FAT filesystem labelled
# config-2 with openstack/latest/{meta_data.json, network_data.json} from
# guest/configdrive, vendor_data.json carrying the very cloud-config of
# guest/seed/vendor-data under its `cloud-init` key (the eight settings, one
# source for both datasources), and user_data. One change: the password goes
# as `chpasswd: {list: [USER:PASSWORD]}`, the form every cloud-init reads
# (20.4 knows no `chpasswd.users`, which came in 22.2 and deprecated `list`
# in 22.3); NoCloud keeps `users`, so both forms stay proven.
CD_SEED=$WORK/seed-cd.img
truncate -s 4M "$CD_SEED"
mkfs.vfat -n config-2 "$CD_SEED" >/dev/null 2>&1 || die "mkfs.vfat $CD_SEED failed"
# shellcheck disable=SC2016
"$PY" - "$GUEST/seed/vendor-data" >"$WORK/vendor_data.json" <<'PYTHON' || die "vendor_data.json failed"
import json, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
users = cfg["chpasswd"].pop("users")
assert all(u.get("type") == "text" for u in users)
cfg["chpasswd"]["list"] = [f"{u['name']}:{u['password']}" for u in users]
text = "#cloud-config\n" + yaml.safe_dump(cfg, sort_keys=False)
json.dump({"cloud-init": text}, sys.stdout, indent=2)
PYTHON
mmd -i "$CD_SEED" ::openstack ::openstack/latest
mcopy -i "$CD_SEED" "$GUEST/configdrive/openstack/latest/meta_data.json" \
    "$GUEST/configdrive/openstack/latest/network_data.json" "$WORK/vendor_data.json" ::openstack/latest/
mcopy -i "$CD_SEED" "$GUEST/seed/user-data" ::openstack/latest/user_data
stage_end

# ------------------------------------------------------------------ boots --
QEMU_COMMON=(
    -nodefaults -no-user-config -display none -monitor none
    -machine q35 -m 1024 -smp 1
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
SHARED=${E2E_SHARED:-}
stage_begin "KVM probe"
# In a matrix run the first release to get here probes; the others wait for
# its answer (one probe per run).
if [ -z "$ACCEL" ] && [ -n "$SHARED" ]; then
    exec {probe_fd}>>"$SHARED/kvm-probe.lock"
    flock "$probe_fd"
    if [ -s "$SHARED/accel" ]; then
        ACCEL=$(cat "$SHARED/accel")
        log "e2e: accelerator from this run's probe: $ACCEL"
        E2E_ACCEL=$ACCEL
    fi
fi
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
if [ -n "$SHARED" ]; then
    [ -s "$SHARED/accel" ] || echo "$ACCEL" >"$SHARED/accel"
    exec {probe_fd}>&-
fi
STAGE_NAME="KVM probe (-> $ACCEL)"
stage_end

accel_args() {
    case "$1" in
        kvm) echo "-accel kvm";;
        *) echo "-accel tcg";;
    esac
}

# The disk each boot copies, and what is done to the copy before the boot:
#   keep LIST  prepare-image --keep LIST
#   fix        prepare-image doctor --fix (rewrites the shebang)
#   clean      prepare-image clean (strips the previous instance)
declare -A BOOT_DISK=([control]=base [all]=base [hostdns]=base [rootuser]=base-rootuser
    [nopyyaml]=disk-nopyyaml [nopyyaml-fixed]=disk-nopyyaml-fixed
    [shebang]=disk-shebang [shebang-fixed]=disk-shebang
    [disabled]=disk-disabled [disabled-fixed]=disk-disabled-fixed
    [masked]=disk-masked [masked-fixed]=disk-masked-fixed
    [leftovers]=disk-leftovers [leftovers-fixed]=disk-leftovers)
declare -A BOOT_STEP=([all]="keep all" [hostdns]="keep hostname,dns" [rootuser]="keep all"
    [shebang-fixed]=fix [leftovers-fixed]=clean)
# The ConfigDrive boots: the same keeps on the ConfigDrive image.
BOOT_DISK[cd-control]=base-cd
BOOT_DISK[cd-all]=base-cd
BOOT_DISK[cd-hostdns]=base-cd
BOOT_STEP[cd-all]="keep all"
BOOT_STEP[cd-hostdns]="keep hostname,dns"
for p in $PROFILES; do
    BOOT_DISK[cd-keep-$p]=base-cd
    BOOT_STEP[cd-keep-$p]="keep $p"
done
# The boots whose keeps `prepare-image status` must predict (issue 12): the
# image's state per setting, read before the boot, against the boot's.
STATUS_BOOTS=" control all hostdns rootuser $(echo ${!BOOT_DISK[@]} | tr ' ' '\n' | grep '^cd-' | xargs) "
# The boots whose image doctor judges (the rows of DOCTOR_ROWS).
DOCTOR_BOOTS=" control nopyyaml nopyyaml-fixed shebang shebang-fixed disabled disabled-fixed"
DOCTOR_BOOTS+=" masked masked-fixed leftovers leftovers-fixed "
FAILED=()
PASSED=()
for b in $BOOTS; do
    [ -n "${BOOT_DISK[$b]+x}" ] || die "unknown boot $b ($ALL_BOOTS)"
done

# The disk of the leftovers boots: the base image plus the /var/lib/cloud the
# control boot left (read out of its disk with debugfs, no mount).
make_leftovers_disk() {
    local state=$WORK/control-var-lib-cloud
    rm -rf "$state"
    mkdir "$state"
    debugfs -R "rdump /var/lib/cloud $state" "$WORK/control.raw?offset=$(( PART_START_SECTOR * 512 ))" \
        >/dev/null 2>"$WORK/debugfs.log" || { cat "$WORK/debugfs.log" >&2; die "debugfs rdump failed"; }
    [ -d "$state/cloud/instances" ] || die "the control boot left no /var/lib/cloud/instances"
    if [ -e "$ROOT/var/lib/cloud" ]; then mv "$ROOT/var/lib/cloud" "$WORK/var-lib-cloud.image"; fi
    cp -a "$state/cloud" "$ROOT/var/lib/cloud"
    make_disk "$ROOT" "$WORK/disk-leftovers.raw"
    rm -rf --one-file-system "$ROOT" "$state" "$WORK/control.raw"
}

# doctor on a boot's image: read-only (the image's sha256 must not change),
# exit 4 exactly when the JSON lists an error.
run_doctor() {
    local name=$1 img=$2 before after rc=0 errors
    before=$(sha256sum <"$img")
    "$PREPARE_IMAGE" doctor --format json "$img" >"$WORK/$name.doctor.json" 2>"$WORK/$name.doctor.err" || rc=$?
    after=$(sha256sum <"$img")
    if [ "$before" != "$after" ]; then
        FAILED+=("doctor $name: the image changed (sha256 ${before%% *} -> ${after%% *})")
    fi
    # shellcheck disable=SC2016  # Python, not an expansion
    errors=$("$PY" -c '
import json, sys
doc = json.load(open(sys.argv[1]))
for f in doc["findings"]:
    if f["severity"] != "ok":
        where = f["evidence"]["path"] if f["evidence"] else ""
        print("    doctor %s: %s[%s] %s" % (sys.argv[2], f["severity"], f["id"], where), file=sys.stderr)
print(doc["summary"]["errors"])' "$WORK/$name.doctor.json" "$name") || errors=""
    case "$rc:$errors" in
        0:0) ;;
        4:[1-9]*) ;;
        *) cat "$WORK/$name.doctor.err" >&2
           FAILED+=("doctor $name: exit $rc with ${errors:-unreadable JSON} error(s)");;
    esac
}

# The copy of a boot's disk, with its step applied.
prepare_disk() {
    local name=$1 img=$2 step=${BOOT_STEP[$1]:-}
    cp --sparse=always "$WORK/${BOOT_DISK[$name]}.raw" "$img"
    case "$step" in
        "") ;;
        keep\ *)
            if ! "$PREPARE_IMAGE" --keep "${step#keep }" "$img" >"$WORK/$name.diff" 2>"$WORK/$name.prepare.log"; then
                cat "$WORK/$name.prepare.log" >&2
                die "prepare-image --keep ${step#keep } $img failed"
            fi
            grep '^warning:' "$WORK/$name.prepare.log" | sed 's/^/    prepare-image: /' >&2 || true;;
        fix)
            "$PREPARE_IMAGE" doctor --fix "$img" >"$WORK/$name.fix.log" 2>&1 || true
            grep -q '^fixed usr/bin/cloud-init:1: ' "$WORK/$name.fix.log" || {
                cat "$WORK/$name.fix.log" >&2; die "prepare-image doctor --fix did not fix usr/bin/cloud-init"; }
            grep '^fixed ' "$WORK/$name.fix.log" | sed 's/^/    prepare-image doctor --fix: /' >&2;;
        clean)
            "$PREPARE_IMAGE" clean "$img" >"$WORK/$name.clean.log" 2>&1 || {
                cat "$WORK/$name.clean.log" >&2; die "prepare-image clean $img failed"; }
            sed 's/^/    prepare-image clean: /' "$WORK/$name.clean.log" >&2;;
        *) die "unknown step $step";;
    esac
}

declare -A QEMU_PID=() QEMU_START=() BOOT_T0=() BOOT_ACCEL=() BOOT_ATTEMPT=() BOOT_DONE=()

start_boot() {
    local name=$1 img=$WORK/$1.raw accel=${BOOT_ACCEL[$1]:-$ACCEL}
    BOOT_ACCEL[$name]=$accel
    BOOT_ATTEMPT[$name]=$(( ${BOOT_ATTEMPT[$name]:-0} + 1 ))
    [ -n "${BOOT_T0[$name]:-}" ] || BOOT_T0[$name]=$(now)
    log "== boot $name${BOOT_STEP[$name]:+ (${BOOT_STEP[$name]})} [$accel]"
    prepare_disk "$name" "$img"
    case "$DOCTOR_BOOTS" in *" $name "*) run_doctor "$name" "$img";; esac
    case "$STATUS_BOOTS" in *" $name "*)
        "$PREPARE_IMAGE" status --format json "$img" >"$WORK/$name.status.json" 2>"$WORK/$name.status.err" || {
            cat "$WORK/$name.status.err" >&2; FAILED+=("status $name: prepare-image status failed"); };;
    esac
    local seed=$SEED
    case "$name" in cd-*) seed=$CD_SEED;; esac
    rm -f "$WORK/$name.console.log" "$WORK/$name.report.log"
    # shellcheck disable=SC2046
    qemu-system-x86_64 "${QEMU_COMMON[@]}" $(accel_args "$accel") \
        -append "$KERNEL_CMDLINE" \
        -drive "file=$img,format=raw,if=virtio,cache=unsafe" \
        -drive "file=$seed,format=raw,if=virtio,readonly=on" \
        -nic "$QEMU_NET" \
        -serial "file:$WORK/$name.console.log" \
        -serial "file:$WORK/$name.report.log" &
    QEMU_PID[$name]=$!
    QEMU_START[$name]=$SECONDS
    CHILD_PIDS+=("$!")
    # qemu holds the slot's lock now; it is free again when qemu exits.
    exec {SLOT_FD}>&-
}

# A guest slot: one of PARALLEL lock files, in the matrix's shared directory
# (all releases' guests count) or this run's. Sets SLOT_FD, which the next
# qemu inherits; returns 1 when every slot is taken.
SLOTS=${SHARED:-$WORK}
acquire_slot() {
    local i fd
    for (( i = 0; i < PARALLEL; i++ )); do
        exec {fd}>>"$SLOTS/slot.$i"
        if flock -n "$fd"; then
            SLOT_FD=$fd
            return 0
        fi
        exec {fd}>&-
    done
    return 1
}

# Called while the boot's qemu runs: returns 1 while it is still running;
# otherwise (it exited, or ran past the timeout and was killed) judges it.
poll_boot() {
    local name=$1 pid=${QEMU_PID[$1]} rc=0
    if kill -0 "$pid" 2>/dev/null; then
        [ $(( SECONDS - QEMU_START[$name] )) -ge "$BOOT_TIMEOUT" ] || return 1
        log "e2e: boot $name: qemu pid $pid still running after ${BOOT_TIMEOUT}s: killing it"
        kill "$pid" 2>/dev/null || true
        sleep 2
        kill -9 "$pid" 2>/dev/null || true
        rc=124
    fi
    local status=0
    wait "$pid" 2>/dev/null || status=$?
    if [ "$rc" != 124 ] && [ "$status" != 0 ]; then
        rc=$status
        log "e2e: qemu pid $pid ($name) exited with status $rc"
    fi
    unset "QEMU_PID[$name]"
    finish_boot "$name" "$rc"
    return 0
}

finish_boot() {
    local name=$1 rc=$2 img=$WORK/$1.raw dt out
    if ! grep -q '===E2E-REPORT-END===' "$WORK/$name.report.log" 2>/dev/null; then
        if [ "${BOOT_ACCEL[$name]}" = kvm ] && [ "${BOOT_ATTEMPT[$name]}" = 1 ]; then
            log "e2e: no report under KVM (rc $rc): booting $name again under TCG"
            ACCEL=tcg
            BOOT_ACCEL[$name]=tcg
            QUEUE=("$name" "${QUEUE[@]}")
            return 0
        fi
        log "e2e: boot $name gave no report (rc $rc); last console lines:"
        tail -n 40 "$WORK/$name.console.log" >&2 || true
        FAILED+=("boot $name: no report")
    else
        local doctor_args=()
        case "$DOCTOR_BOOTS" in *" $name "*) doctor_args=(--doctor-json "$WORK/$name.doctor.json");; esac
        if [ -s "$WORK/$name.status.json" ]; then doctor_args+=(--status-json "$WORK/$name.status.json"); fi
        if out=$("$PY" "$HERE/evaluate.py" --release "$SUITE" --boot "$name" --guest "$GUEST" \
                --image-host-keys "$WORK/image-host-keys.pub" \
                --report "$WORK/$name.report.log" --json-out "$WORK/$name.report.json" \
                --summary-out "$WORK/$name.summary.json" "${doctor_args[@]}"); then
            PASSED+=("$name")
        else
            FAILED+=("boot $name: expectations not met")
        fi
        printf '%s\n' "$out"
    fi
    dt=$(awk -v a="${BOOT_T0[$name]}" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    TIMINGS+=("$(printf '%-34s %7ss' "boot $name" "$dt")")
    log "== boot $name: ${dt}s"
    BOOT_DONE[$name]=1
    # The leftovers boots start from the disk the control boot leaves.
    if [ "$name" = control ] && { wanted leftovers || wanted leftovers-fixed; }; then
        make_leftovers_disk
    fi
    rm -f "$img"
}

# The next boot that can start: the first in QUEUE, passing over the
# leftovers boots until the control boot has left its disk.
next_boot() {
    local b
    for b in "${QUEUE[@]}"; do
        case "$b" in leftovers*) [ -n "${BOOT_DONE[control]:-}" ] || continue;; esac
        echo "$b"
        return 0
    done
    return 1
}

# The boots, PARALLEL at a time, in START_ORDER.
stage_begin "boots ($(wc -w <<<"$BOOTS"), $PARALLEL at a time)"
QUEUE=()
for b in $START_ORDER; do
    if wanted "$b"; then QUEUE+=("$b"); fi
done
while [ "${#QUEUE[@]}" -gt 0 ] || [ "${#QEMU_PID[@]}" -gt 0 ]; do
    for b in "${!QEMU_PID[@]}"; do
        poll_boot "$b" || true
    done
    while b=$(next_boot) && acquire_slot; do
        for i in "${!QUEUE[@]}"; do
            if [ "${QUEUE[$i]}" = "$b" ]; then unset "QUEUE[$i]"; fi
        done
        QUEUE=("${QUEUE[@]}")
        start_boot "$b"
    done
    sleep 0.5
done
stage_end

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
doctor_summaries=()
for b in $BOOTS; do
    [ -f "$WORK/$b.summary.json" ] || continue
    case "$DOCTOR_BOOTS" in *" $b "*) doctor_summaries+=("$WORK/$b.summary.json");; esac
    case "$b" in control|all|hostdns|rootuser|cd-*) summaries+=("$WORK/$b.summary.json");; esac
    # The matrix's table gathers every release's summaries.
    if [ -n "$SHARED" ]; then cp "$WORK/$b.summary.json" "$SHARED/summaries/$SUITE.$b.json"; fi
done
if [ "${#summaries[@]}" -gt 0 ]; then
    printf '\n== per-setting table\n'
    "$PY" "$HERE/evaluate.py" --table "${summaries[@]}"
fi
if [ "${#doctor_summaries[@]}" -gt 0 ]; then
    printf '\n== doctor x boot table\n'
    "$PY" "$HERE/evaluate.py" --doctor-table "${doctor_summaries[@]}" \
        || FAILED+=("doctor x boot table: a row disagrees")
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
