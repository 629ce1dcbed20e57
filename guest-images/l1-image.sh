#!/bin/bash
# Builds the KVM lab's L1 initramfs: an UNCOMPRESSED newc cpio (gunzip is slow under emulation)
# made of three concatenated archives, which the kernel unpacks in order:
#   qemu.cpio     QEMU + its shared libraries + firmware          (cached: QEMU version)
#   modules.cpio  kvm, kvm-amd, tun, bridge, veth, vhost... + deps  (cached: kernel version)
#   payload.cpio  busybox, /init, berth, the L2 kernel + initrd, the scenarios
#                 (l1.cpio is reused only if none of these, nor the plan, changed)
#
# Usage: BERTH_BIN=path/to/berth guest-images/l1-image.sh [--plan FILE | SCENARIO.sh...]
#   SCENARIO.sh...  scenario files; the timeout comes from their '# timeout:' header (default 300)
#   --plan FILE     lines "<path-to-scenario.sh> <timeout> [tty]" (written by tests/lab/lab)
#   BERTH_BIN       the static berth binary; optional (scenarios that need it then SKIP)
#   L1_EXTRA_BINS   more static binaries (space-separated paths), installed as /lab/bin/<name>:
#                   e.g. a unit-test binary a scenario runs where the host cannot (net-vhost-unit)
#   L1_OUTPUT       also hard-link the image to this path (same filesystem as the cache) and
#                   report it as L1_INITRD: a private copy for one run
# Output (stdout, eval-able):  L1_KERNEL=...  L1_INITRD=...  L2_KERNEL=...  L2_INITRD=...
set -euo pipefail
GI_NAME=l1-image.sh
. "$(dirname "$0")/lib.sh"
need busybox cpio ldd sha256sum

# Modules L1 loads (dependencies are added from modules.dep, loaded first).
# virtio_pci + virtio_blk: L1's own disks (`# l1-disks:` of berth-gate), from L1's kernel.
L1_MODULES=(irqbypass ccp kvm kvm-amd tun llc stp bridge veth vhost_iotlb vhost vhost_net
            crc32c_generic nfnetlink nf_tables nf_conntrack nf_nat nft_chain_nat nft_nat
            virtio_pci virtio_blk)
QEMU_BIN=${QEMU_BIN:-$(command -v qemu-system-x86_64 || true)}
[ -n "$QEMU_BIN" ] || die "qemu-system-x86_64 not found; run scripts/setup"
IPROUTE_BIN=$(readlink -f "$(command -v ip || echo /bin/ip)")
[ -x "$IPROUTE_BIN" ] || die "iproute2's ip not found; run scripts/setup"
FIRMWARE=(/usr/share/seabios/bios-256k.bin /usr/share/seabios/bios-microvm.bin
          /usr/share/qemu/qboot.rom /usr/share/qemu/linuxboot_dma.bin /usr/share/qemu/linuxboot.bin
          /usr/share/qemu/kvmvapic.bin /usr/share/qemu/pvh.bin /usr/lib/ipxe/qemu/efi-virtio.rom)

plan_in=()  # "path timeout tty" lines
if [ "${1:-}" = --plan ]; then
    [ -f "${2:-}" ] || die "--plan needs a file"
    mapfile -t plan_in < "$2"
else
    for f in "$@"; do
        [ -f "$f" ] || die "scenario $f not found"
        t=$(sed -n 's/^# *timeout: *\([0-9]\+\).*/\1/p' "$f" | head -n1)
        plan_in+=("$f ${t:-300}")
    done
fi

# L1 runs the 6.12 kernel of bookworm-backports, the L2 test guest Debian 12's own 6.1. Under
# 6.1, L1's nested KVM (on QEMU's emulated SVM) died or wedged in CI runs while berth used
# vhost-net, 2 vCPUs or /metrics (kernel stack overflow in KVM's vCPU path; an L2 vCPU that never
# ran again); with 6.12 the same scenarios pass (tests/lab/README.md). L1_KERNEL_SERIES=6.1
# brings the old L1 back; L1_KERNEL_PKG + L1_KERNEL_VERSION pin one package.
if [ -n "${L1_KERNEL_PKG:-}" ]; then
    eval "$(KERNEL_PKG=$L1_KERNEL_PKG KERNEL_VERSION=${L1_KERNEL_VERSION:?L1_KERNEL_VERSION too} \
        "$GI_DIR/kernel.sh")"
else
    eval "$(KERNEL_SERIES=${L1_KERNEL_SERIES:-6.12} KERNEL_PKG= KERNEL_VERSION= "$GI_DIR/kernel.sh")"
fi
eval "$("$GI_DIR/l2-initramfs.sh")"

d=$CACHE/l1
mkdir -p "$d"
tmp=$(mktemp -d "$d/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --- qemu.cpio (cached) ----------------------------------------------------------------------
qstamp=$(stamp_of "$0" "$GI_DIR/lib.sh" "$QEMU_BIN" \
    "$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)" "${FIRMWARE[*]}" \
    "$IPROUTE_BIN" "$(command -v dbclient)")
if fresh "$d/qemu.cpio" "$qstamp"; then
    log "reusing qemu.cpio"
else
    log "building qemu.cpio from $QEMU_BIN"
    r=$tmp/qemu
    copy_with_libs "$r" "$QEMU_BIN"
    # iproute2's ip for scenarios that build network namespaces (busybox ip cannot move links
    # between namespaces); installed as ip2 so busybox's ip applet does not shadow it.
    copy_with_libs "$r" "$IPROUTE_BIN"
    install -D -m 755 "$r$IPROUTE_BIN" "$r/usr/local/bin/ip2" && rm -f "$r$IPROUTE_BIN"
    # dropbear's SSH client and key tool, for scenarios that log in to a guest with a key.
    for t in dbclient dropbearkey; do
        tb=$(command -v "$t") || die "$t not found; run scripts/setup (dropbear-bin)"
        copy_with_libs "$r" "$tb"
        [ "$tb" = "/usr/local/bin/$t" ] || { install -D -m 755 "$r$tb" "$r/usr/local/bin/$t"; rm -f "$r$tb"; }
    done
    [ "$QEMU_BIN" = /usr/bin/qemu-system-x86_64 ] || install -D -m 755 "$QEMU_BIN" "$r/usr/bin/qemu-system-x86_64"
    mkdir -p "$r/usr/share/qemu"
    for fw in "${FIRMWARE[@]}"; do
        if [ -e "$fw" ]; then cp -L "$fw" "$r/usr/share/qemu/"; else log "note: firmware $fw not found (skipped)"; fi
    done
    mkcpio "$r" "$tmp/qemu.cpio" || die "cpio of qemu tree failed"
    publish "$tmp/qemu.cpio" "$d/qemu.cpio" "$qstamp"
fi

# --- modules.cpio (cached) -------------------------------------------------------------------
mstamp=$(stamp_of "$0" "$GI_DIR/lib.sh" "$KVER" "$MODDIR/modules.dep" "${L1_MODULES[*]}")
if fresh "$d/modules.cpio" "$mstamp"; then
    log "reusing modules.cpio"
else
    log "building modules.cpio ($KVER)"
    r=$tmp/mods/lib/modules/lab
    mkdir -p "$r"
    # deps-first order from modules.dep (its lines are "path.ko: dep.ko dep.ko ...")
    order=()
    add_mod() {
        local name=$1 line path dep n
        for n in "${order[@]}"; do [ "$n" = "$name" ] && return 0; done
        line=$(grep -E "/${name//-/[-_]}\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" | head -n1 || true)
        if [ -z "$line" ]; then
            grep -qE "/${name//-/[-_]}\.ko" "$MODDIR/modules.builtin" 2>/dev/null \
                || log "note: module $name not found in $KVER (skipped)"
            return 0
        fi
        path=${line%%:*}
        for dep in ${line#*:}; do dep=${dep##*/}; add_mod "${dep%%.ko*}"; done
        # busybox insmod takes plain modules; newer Debian kernels ship them xz-compressed.
        case $path in
            *.ko.xz) xz -dc "$MODDIR/$path" > "$r/$name.ko" ;;
            *.ko.zst) zstd -qdc "$MODDIR/$path" > "$r/$name.ko" ;;
            *) cp "$MODDIR/$path" "$r/$name.ko" ;;
        esac
        order+=("$name")
    }
    for m in "${L1_MODULES[@]}"; do add_mod "$m"; done
    printf '%s\n' "${order[@]}" > "$r/order"
    mkcpio "$tmp/mods" "$tmp/modules.cpio" || die "cpio of modules failed"
    publish "$tmp/modules.cpio" "$d/modules.cpio" "$mstamp"
fi

# --- payload.cpio + l1.cpio (berth and scenarios change often: checked on every call) ---------
BUSYBOX=$(command -v busybox)
# The scenarios' shell helpers (tests/lab/lib), installed as /lab/lib.
LAB_LIB_DIR=$(cd "$GI_DIR/../tests/lab/lib" && pwd) || die "tests/lab/lib not found"
pstamp_args=("$0" "$GI_DIR/lib.sh" "$GI_DIR/l1/init" "$BUSYBOX" "$L2_KERNEL" "$L2_INITRD"
             "$qstamp" "$mstamp" "${BERTH_BIN:-no-berth}" "$LAB_LIB_DIR"/*.sh)
for b in ${L1_EXTRA_BINS:-}; do
    [ -f "$b" ] || die "L1_EXTRA_BINS: $b does not exist"
    pstamp_args+=("$b")
done
for line in "${plan_in[@]}"; do
    read -r path _ <<< "$line"
    pstamp_args+=("$line" "$path")
done
# Scenarios that declare `# needs: vmlinux` get the L2 kernel as an uncompressed ELF too (62 MiB,
# so only then).
L2_VMLINUX=
for line in "${plan_in[@]}"; do
    read -r path _ <<< "$line"
    if grep -qE '^# needs:.*\bvmlinux\b' "$path"; then
        eval "$("$GI_DIR/vmlinux.sh" "$L2_KERNEL")"
        L2_VMLINUX=$VMLINUX
    fi
done
pstamp_args+=("vmlinux:$L2_VMLINUX")
# Scenarios that declare `# needs: benchtools` (the bench-* ones) get fio + iperf3 for L2 as a
# cpio to append to its initrd (guest-images/l2-benchtools.sh) and iperf3 in L1, the peer.
L2_TOOLS=
for line in "${plan_in[@]}"; do
    read -r path _ <<< "$line"
    if grep -qE '^# needs:.*\bbenchtools\b' "$path"; then
        eval "$("$GI_DIR/l2-benchtools.sh")"
    fi
done
pstamp_args+=("benchtools:$L2_TOOLS" "$L2_TOOLS")
pstamp=$(stamp_of "${pstamp_args[@]}")
emit() {
    printf 'L1_KERNEL=%q\nL1_INITRD=%q\nL2_KERNEL=%q\nL2_INITRD=%q\n' \
        "$VMLINUZ" "${L1_OUTPUT:-$d/l1.cpio}" "$L2_KERNEL" "$L2_INITRD"
}
# L1_OUTPUT: also hard-link the result there, a private name that a concurrent run rebuilding
# l1.cpio for another plan cannot replace before this run's QEMU opens it.
if fresh "$d/l1.cpio" "$pstamp" && { [ -z "${L1_OUTPUT:-}" ] || ln -f "$d/l1.cpio" "$L1_OUTPUT"; } \
        && fresh "$d/l1.cpio" "$pstamp"; then
    log "reusing l1.cpio (berth, scenarios and images unchanged)"
    emit; exit 0
fi
r=$tmp/payload
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,scratch,etc}
mkdir -p "$r"/lab/{bin,l2,scenarios,lib}
install -m 644 "$LAB_LIB_DIR"/*.sh "$r/lab/lib/"
install -m 755 "$BUSYBOX" "$r/bin/busybox"
"$BUSYBOX" --list-full | while read -r applet; do
    [ -e "$r/$applet" ] || ln -s /bin/busybox "$r/$applet"
done
install -m 755 "$GI_DIR/l1/init" "$r/init"
echo 'root::0:0:root:/root:/bin/sh' > "$r/etc/passwd"
echo 'root:x:0:' > "$r/etc/group"
if [ -n "${BERTH_BIN:-}" ]; then
    [ -f "$BERTH_BIN" ] || die "BERTH_BIN=$BERTH_BIN does not exist"
    if ldd "$BERTH_BIN" 2>/dev/null | grep -q '=>'; then
        log "warning: $BERTH_BIN is dynamically linked; L1 has no libc, build it with +crt-static"
    fi
    install -m 755 "$BERTH_BIN" "$r/lab/bin/berth"
else
    log "note: BERTH_BIN not set; the image has no berth (scenarios needing it will SKIP)"
fi
for b in ${L1_EXTRA_BINS:-}; do install -m 755 "$b" "$r/lab/bin/$(basename "$b")"; done
cp "$L2_KERNEL" "$r/lab/l2/vmlinuz"
cp "$L2_INITRD" "$r/lab/l2/initrd.cpio.gz"
[ -z "$L2_VMLINUX" ] || cp "$L2_VMLINUX" "$r/lab/l2/vmlinux"
if [ -n "$L2_TOOLS" ]; then
    cp "$L2_TOOLS" "$r/lab/l2/tools.cpio"
    copy_with_libs "$r" "$(command -v iperf3)"
fi
: > "$r/lab/plan"
for line in "${plan_in[@]}"; do
    read -r path timeout tty <<< "$line"
    [ -f "$path" ] || die "scenario $path not found"
    name=$(basename "$path" .sh)
    install -m 755 "$path" "$r/lab/scenarios/$name.sh"
    echo "$name ${timeout:-300} ${tty:-}" >> "$r/lab/plan"
done
mkcpio "$r" "$tmp/payload.cpio" || die "cpio of payload failed"

cat "$d/qemu.cpio" "$d/modules.cpio" "$tmp/payload.cpio" > "$tmp/l1.cpio"
[ -z "${L1_OUTPUT:-}" ] || ln -f "$tmp/l1.cpio" "$L1_OUTPUT" || die "cannot link $L1_OUTPUT"
publish "$tmp/l1.cpio" "$d/l1.cpio" "$pstamp"
log "built $d/l1.cpio ($(du -m "$d/l1.cpio" | cut -f1) MiB, ${#plan_in[@]} scenario(s))"
emit
