#!/bin/bash
# Builds a Debian 12 cloud image the way Debian builds its "genericcloud" image, for berth's
# boot-from-disk tests: a GPT disk with a BIOS boot partition (14), an EFI system partition
# (15, empty FAT) and an ext4 root (1) holding /boot, the cloud kernel
# (linux-image-cloud-amd64) with an initramfs that loads virtio, GRUB's configuration
# (/boot/grub/grub.cfg written by Debian's own update-grub), cloud-init (NoCloud and
# ConfigDrive), openssh-server and systemd. Everything comes from Debian's mirror.
#
# Output (stdout, eval-able):
#   DEBIAN_CLOUD_IMAGE=...   the qcow2 image (2 GiB virtual, ~0.5 GiB of data)
#   DEBIAN_CLOUD_ROOT_UUID=...  the root file system's UUID (grub.cfg says root=UUID=<it>)
#   DEBIAN_CLOUD_KVER=...    the kernel version inside
# Cached in $BERTH_CACHE/debian-cloud/ (the .info file next to the image holds the same lines);
# rebuilt when this script or its helpers change. Needs root (mmdebstrap in root mode, chroot).
#
# What differs from Debian's image: GRUB is installed for BIOS boot the way grub-install would
# (boot.img in the MBR, core.img in the BIOS boot partition, modules in /boot/grub/i386-pc)
# but by this script, since grub-install needs the disk as a device; the ESP is empty (no
# UEFI boot yet); no growpart; and the root file system is made with `mkfs.ext4 -d` into a
# partition-sized file that is then copied into the disk image.
#
# Layouts (DEBIAN_CLOUD_LAYOUT): `ext4` (the default, above) and `xfs`, the RHEL family's
# layout (Rocky, Alma, CentOS Stream, Oracle): the same disk with an XFS root holding /boot,
# which berth's direct boot cannot read, so the image boots through the firmware and its own
# GRUB (guest-images/debian-xfs.sh; cached in $BERTH_CACHE/debian-cloud-xfs/ and printed
# as DEBIAN_CLOUD_XFS_IMAGE=...). mkfs.xfs cannot take a directory, so the XFS root is filled
# through a loop mount.
#
# Knobs: DEBIAN_MIRROR (default: the URIs of /etc/apt/sources.list.d/debian.sources),
#        DEBIAN_CLOUD_SIZE_MB (virtual disk size, default 2048), DEBIAN_CLOUD_LAYOUT.
set -euo pipefail
GI_NAME=debian-cloud.sh
. "$(dirname "$0")/lib.sh"
need mmdebstrap sgdisk mkfs.ext4 mkfs.vfat qemu-img chroot dd
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap root mode and chroot)"
LAYOUT=${DEBIAN_CLOUD_LAYOUT:-ext4}
case $LAYOUT in
    ext4) ROOT_FS=ext4 GRUB_FS=ext2 NAME=debian-cloud VAR=DEBIAN_CLOUD ;;
    xfs) ROOT_FS=xfs GRUB_FS=xfs NAME=debian-cloud-xfs VAR=DEBIAN_CLOUD_XFS
        need mkfs.xfs mount umount ;;
    *) die "DEBIAN_CLOUD_LAYOUT=$LAYOUT: use ext4 or xfs" ;;
esac
export ROOT_FS

SUITE=bookworm
SIZE_MB=${DEBIAN_CLOUD_SIZE_MB:-2048}
HELPERS=$GI_DIR/debian-cloud
PACKAGES=systemd-sysv,udev,cloud-init,openssh-server,linux-image-cloud-amd64,initramfs-tools
PACKAGES+=,ifupdown,isc-dhcp-client,netbase,iproute2,e2fsprogs,kmod,grub-pc-bin,grub2-common
# dbus: systemd-logind needs it, and logind is what turns the ACPI power button (berth on
# SIGTERM) into a clean shutdown, as in the distribution's own cloud images.
PACKAGES+=,qemu-guest-agent,ca-certificates,sudo,less,dbus
[ "$LAYOUT" = xfs ] && PACKAGES+=,xfsprogs

mirror_of() {  # the first URIs: of the stanza serving suite $1 in debian.sources
    awk -v suite="$1" 'BEGIN { RS=""; FS="\n" } {
        u=""; ok=0
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^URIs:/) { u=$i; sub(/^URIs:[ \t]*/, "", u); sub(/[ \t].*/, "", u) }
            if ($i ~ /^Suites:/ && (" " $i " ") ~ (" " suite " ")) ok=1
        }
        if (ok && u != "") { print u; exit }
    }' /etc/apt/sources.list.d/debian.sources 2>/dev/null
}
MIRROR=${DEBIAN_MIRROR:-$(mirror_of "$SUITE")}
[ -n "$MIRROR" ] || die "no Debian mirror for $SUITE in /etc/apt/sources.list.d/debian.sources; set DEBIAN_MIRROR"
SECURITY=$(mirror_of "$SUITE-security")
SOURCES=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main")
[ -z "$SECURITY" ] || SOURCES+=("deb $SECURITY $SUITE-security main")

out_dir=$CACHE/$NAME
out=$out_dir/${NAME/debian-cloud/debian-12-cloud}.qcow2
mkdir -p "$out_dir"
stamp=$(stamp_of "$GI_DIR/debian-cloud.sh" "$GI_DIR/lib.sh" "$HELPERS/customize.sh" \
    "$HELPERS/grub-probe" "$PACKAGES" "$SIZE_MB" "${SOURCES[*]}" "$LAYOUT")

emit() { cat "$out.info"; }
if fresh "$out" "$stamp" && [ -f "$out.info" ]; then
    log "reusing $out"
    emit; exit 0
fi

tmp=$(mktemp -d "$out_dir/.tmp.XXXXXX")
# --one-file-system: never descend into a /proc, /sys or /dev a failed mmdebstrap left mounted.
trap 'rm -rf --one-file-system "$tmp"' EXIT
r=$tmp/rootfs
ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
ROOT_PARTUUID=$(cat /proc/sys/kernel/random/uuid)
export ROOT_UUID

t0=$SECONDS
log "mmdebstrap $SUITE from $MIRROR (about a minute)"
# Documentation, manuals and translations are left out to keep the image small.
mmdebstrap --mode=root --variant=minbase --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="$HELPERS/customize.sh \"\$1\"" \
    "$SUITE" "$r" "${SOURCES[@]}" >"$tmp/mmdebstrap.log" 2>&1 \
    || { tail -n 40 "$tmp/mmdebstrap.log" >&2; die "mmdebstrap failed (log above)"; }
log "root tree ready after $((SECONDS - t0)) s ($(du -sm "$r" | cut -f1) MiB)"
# mmdebstrap in root mode leaves this machine's own /var/lib/apt/lists empty (measured): other
# scripts (guest-images/kernel.sh) need them, so fetch them again.
apt-get update -q >/dev/null 2>&1 || log "note: apt-get update failed; later apt-cache look-ups may fail"

# grub.cfg by Debian's update-grub (grub-mkconfig and /etc/grub.d, as on an installed system).
# grub-probe and grub-mkrelpath ask the kernel about the block device under /, which does not
# exist yet: stand-ins answer for the partition the tree is going to (GPT 1, ext4, ROOT_UUID),
# and 10_linux uses root=UUID= only if /dev/disk/by-uuid/<uuid> exists, so it does meanwhile.
sbin=$r/usr/sbin
mv "$sbin/grub-probe" "$sbin/grub-probe.real"
mv "$r/usr/bin/grub-mkrelpath" "$r/usr/bin/grub-mkrelpath.real"
sed -e "s/@ROOT_UUID@/$ROOT_UUID/" -e "s/@ROOT_PARTUUID@/$ROOT_PARTUUID/" \
    -e "s/@GRUB_FS@/$GRUB_FS/" "$HELPERS/grub-probe" > "$sbin/grub-probe"
printf '#!/bin/sh\nfor a; do p=$a; done\necho "$p"\n' > "$r/usr/bin/grub-mkrelpath"
chmod 755 "$sbin/grub-probe" "$r/usr/bin/grub-mkrelpath"
made_null=
[ -e "$r/dev/null" ] || { mknod -m 666 "$r/dev/null" c 1 3; made_null=1; }
mkdir -p "$r/dev/disk/by-uuid" "$r/boot/grub"
touch "$r/dev/disk/by-uuid/$ROOT_UUID"
chroot "$r" /usr/sbin/update-grub >"$tmp/update-grub.log" 2>&1 \
    || { cat "$tmp/update-grub.log" >&2; die "update-grub in the image tree failed"; }
rm -rf "$r/dev/disk"
[ -z "$made_null" ] || rm -f "$r/dev/null"
mv "$sbin/grub-probe.real" "$sbin/grub-probe"
mv "$r/usr/bin/grub-mkrelpath.real" "$r/usr/bin/grub-mkrelpath"
grep -q "root=UUID=$ROOT_UUID" "$r/boot/grub/grub.cfg" \
    || die "update-grub wrote a grub.cfg without root=UUID=$ROOT_UUID"
# GRUB for BIOS boot, what `grub-install --target=i386-pc` does on Debian's image, without a
# block device: the image's own modules into /boot/grub/i386-pc, and a core.img made by the
# image's own grub-mkimage (so it matches those modules) that finds the root file system by
# UUID and reads /boot/grub from it. boot.img and core.img go into the disk below.
mkdir -p "$r/boot/grub/i386-pc"
cp "$r"/usr/lib/grub/i386-pc/*.mod "$r"/usr/lib/grub/i386-pc/*.lst "$r/boot/grub/i386-pc/"
printf 'search.fs_uuid %s root hd0,gpt1\nset prefix=($root)/boot/grub\n' "$ROOT_UUID" \
    > "$r/tmp/early.cfg"
chroot "$r" grub-mkimage -O i386-pc -d /usr/lib/grub/i386-pc -c /tmp/early.cfg \
    -p /boot/grub -o /tmp/core.img biosdisk part_gpt "$GRUB_FS" search_fs_uuid \
    >"$tmp/grub-mkimage.log" 2>&1 || { cat "$tmp/grub-mkimage.log" >&2; die "grub-mkimage failed"; }
mv "$r/tmp/core.img" "$tmp/core.img"
cp "$r/usr/lib/grub/i386-pc/boot.img" "$tmp/boot.img"
rm -f "$r/tmp/early.cfg"
kver=$(ls "$r/lib/modules" | head -n1)
[ -f "$r/boot/vmlinuz-$kver" ] && [ -f "$r/boot/initrd.img-$kver" ] \
    || die "no /boot/vmlinuz-$kver + initrd.img-$kver in the tree"

# The disk, Debian genericcloud layout: 14 BIOS boot (sectors 2048-8191), 15 ESP (to 262143),
# 1 root (the rest, minus the backup GPT).
disk=$tmp/disk.raw
truncate -s "${SIZE_MB}M" "$disk"
sgdisk -n 14:2048:8191 -t 14:EF02 -c 14:bios \
    -n 15:8192:262143 -t 15:EF00 -c 15:efi \
    -n 1:262144:0 -t 1:8300 -c 1:root -u "1:$ROOT_PARTUUID" "$disk" >/dev/null \
    || die "sgdisk failed"
read -r start end < <(sgdisk -i 1 "$disk" \
    | awk '/^First sector/ {s=$3} /^Last sector/ {e=$3} END {print s, e}')
root_bytes=$(( (end - start + 1) * 512 ))

truncate -s $((124 * 1024 * 1024)) "$tmp/esp.img"
mkfs.vfat -F 32 -n EFI "$tmp/esp.img" >/dev/null || die "mkfs.vfat failed"
dd if="$tmp/esp.img" of="$disk" bs=512 seek=8192 conv=notrunc,sparse status=none

truncate -s "$root_bytes" "$tmp/root.fs"
if [ "$LAYOUT" = xfs ]; then
    mkfs.xfs -q -f -m uuid="$ROOT_UUID" -L root "$tmp/root.fs" || die "mkfs.xfs failed"
    mkdir "$tmp/mnt"
    mount -o loop "$tmp/root.fs" "$tmp/mnt" \
        || die "mount -o loop of the XFS root failed: the xfs layout needs loop devices and mount"
    cp -a "$r/." "$tmp/mnt/" || { umount "$tmp/mnt"; die "copying the tree into the XFS root failed"; }
    umount "$tmp/mnt" || die "umount of the XFS root failed"
else
    mkfs.ext4 -q -F -U "$ROOT_UUID" -L root -d "$r" "$tmp/root.fs" \
        || die "mkfs.ext4 -d failed (image too small? DEBIAN_CLOUD_SIZE_MB=$SIZE_MB)"
fi
dd if="$tmp/root.fs" of="$disk" bs=1M seek=$((start / 2048)) conv=notrunc,sparse status=none
rm -f "$tmp/root.fs" "$tmp/esp.img"
# boot.img's code into the protective MBR (its first 440 bytes; the partition table stays), told
# to load core.img from sector 2048, the BIOS boot partition; core.img there, its first sector's
# block list pointing at the rest (grub-bios-setup's two patches).
python3 - "$tmp/boot.img" "$tmp/core.img" "$disk" <<'PY' || die "installing GRUB's boot code failed"
import struct, sys
boot = bytearray(open(sys.argv[1], "rb").read())
core = bytearray(open(sys.argv[2], "rb").read())
start, room = 2048, (8191 - 2048 + 1) * 512
assert len(boot) == 512 and len(core) <= room, "core.img does not fit the BIOS boot partition"
struct.pack_into("<Q", boot, 0x5C, start)          # GRUB_BOOT_MACHINE_KERNEL_SECTOR
start_rest, n_rest, _ = struct.unpack_from("<QHH", core, 0x1F4)
assert n_rest == (len(core) + 511) // 512 - 1, "unexpected block list in core.img"
struct.pack_into("<Q", core, 0x1F4, start + 1)     # the rest of core.img follows it
with open(sys.argv[3], "r+b") as d:
    d.write(boot[:440])
    d.seek(start * 512)
    d.write(core)
PY

qemu-img convert -O qcow2 "$disk" "$tmp/image.qcow2" || die "qemu-img convert failed"
printf '%s_IMAGE=%q\n%s_ROOT_UUID=%q\n%s_KVER=%q\n' \
    "$VAR" "$out" "$VAR" "$ROOT_UUID" "$VAR" "$kver" > "$tmp/image.info"
cp "$r/boot/grub/grub.cfg" "$tmp/image.grub.cfg"
mv -f "$tmp/image.info" "$out.info"
mv -f "$tmp/image.grub.cfg" "$out.grub.cfg"
publish "$tmp/image.qcow2" "$out" "$stamp"
log "built $out ($(du -m "$out" | cut -f1) MiB, kernel $kver) in $((SECONDS - t0)) s"
emit
