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
# What differs from Debian's image: GRUB is configured but not installed into the BIOS boot
# partition or the ESP (grub-install needs the disk as a device; berth boots without firmware
# and reads grub.cfg itself), no growpart, and the root file system is made with
# `mkfs.ext4 -d` into a partition-sized file that is then copied into the disk image.
#
# Knobs: DEBIAN_MIRROR (default: the URIs of /etc/apt/sources.list.d/debian.sources),
#        DEBIAN_CLOUD_SIZE_MB (virtual disk size, default 2048).
set -euo pipefail
GI_NAME=debian-cloud.sh
. "$(dirname "$0")/lib.sh"
need mmdebstrap sgdisk mkfs.ext4 mkfs.vfat qemu-img chroot dd
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap root mode and chroot)"

SUITE=bookworm
SIZE_MB=${DEBIAN_CLOUD_SIZE_MB:-2048}
HELPERS=$GI_DIR/debian-cloud
PACKAGES=systemd-sysv,udev,cloud-init,openssh-server,linux-image-cloud-amd64,initramfs-tools
PACKAGES+=,ifupdown,isc-dhcp-client,netbase,iproute2,e2fsprogs,kmod,grub-pc-bin,grub2-common
# dbus: systemd-logind needs it, and logind is what turns the ACPI power button (berth on
# SIGTERM) into a clean shutdown, as in the distribution's own cloud images.
PACKAGES+=,qemu-guest-agent,ca-certificates,sudo,less,dbus

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

out_dir=$CACHE/debian-cloud
out=$out_dir/debian-12-cloud.qcow2
mkdir -p "$out_dir"
stamp=$(stamp_of "$0" "$GI_DIR/lib.sh" "$HELPERS/customize.sh" "$HELPERS/grub-probe" \
    "$PACKAGES" "$SIZE_MB" "${SOURCES[*]}")

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
    "$HELPERS/grub-probe" > "$sbin/grub-probe"
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

truncate -s "$root_bytes" "$tmp/root.ext4"
mkfs.ext4 -q -F -U "$ROOT_UUID" -L root -d "$r" "$tmp/root.ext4" \
    || die "mkfs.ext4 -d failed (image too small? DEBIAN_CLOUD_SIZE_MB=$SIZE_MB)"
dd if="$tmp/root.ext4" of="$disk" bs=1M seek=$((start / 2048)) conv=notrunc,sparse status=none
rm -f "$tmp/root.ext4" "$tmp/esp.img"

qemu-img convert -O qcow2 "$disk" "$tmp/image.qcow2" || die "qemu-img convert failed"
printf 'DEBIAN_CLOUD_IMAGE=%q\nDEBIAN_CLOUD_ROOT_UUID=%q\nDEBIAN_CLOUD_KVER=%q\n' \
    "$out" "$ROOT_UUID" "$kver" > "$tmp/image.info"
cp "$r/boot/grub/grub.cfg" "$tmp/image.grub.cfg"
mv -f "$tmp/image.info" "$out.info"
mv -f "$tmp/image.grub.cfg" "$out.grub.cfg"
publish "$tmp/image.qcow2" "$out" "$stamp"
log "built $out ($(du -m "$out" | cut -f1) MiB, kernel $kver) in $((SECONDS - t0)) s"
emit
