#!/bin/bash
# A raw disk that boots the lab's L2 Linux through a BIOS and GRUB, for the firmware-boot lab
# scenario: GRUB's boot.img code in the MBR, core.img (grub-mkimage, Debian's grub-pc-bin) in
# the sectors after it, and partition 1 (from 1 MiB) an ext4 file system with the L2 kernel
# and initramfs. core.img's embedded configuration prints BERTH-GRUB-LINUX through GRUB's
# serial driver, loads both from (hd0,msdos1) and boots with l2.action=poweroff.
#
#   guest-images/grub-linux-disk.sh     # prints GRUB_LINUX_DISK_IMAGE=<path> (eval-able)
set -euo pipefail
GI_NAME=grub-linux-disk.sh
GI_DIR=$(cd "$(dirname "$0")" && pwd)
. "$GI_DIR/lib.sh"
need grub-mkimage mkfs.ext4 python3
GRUB=/usr/lib/grub/i386-pc
[ -f "$GRUB/boot.img" ] || die "$GRUB/boot.img missing: install grub-pc-bin (scripts/setup)"
eval "$("$GI_DIR/l2-initramfs.sh")"
d=$CACHE/grub-disk
mkdir -p "$d"
out=$d/grub-linux-disk.img
stamp=$(stamp_of "$0" "$GRUB/boot.img" "$GRUB/kernel.img" "$(command -v grub-mkimage)" \
    "$L2_KERNEL" "$L2_INITRD")
if ! fresh "$out" "$stamp"; then
    tmp=$(mktemp -d "$d/tmp.XXXXXX")
    printf '%s\n' 'serial --unit=0 --speed=115200' 'terminal_output serial' \
        'echo BERTH-GRUB-LINUX' \
        'linux (hd0,msdos1)/vmlinuz console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 l2.action=poweroff' \
        'initrd (hd0,msdos1)/initrd.gz' 'boot' > "$tmp/early.cfg"
    grub-mkimage -O i386-pc -p '(hd0,msdos1)' -d "$GRUB" -c "$tmp/early.cfg" \
        -o "$tmp/core.img" biosdisk part_msdos ext2 linux serial terminal echo
    mkdir "$tmp/root"
    cp "$L2_KERNEL" "$tmp/root/vmlinuz"
    cp "$L2_INITRD" "$tmp/root/initrd.gz"
    mb=$(( ($(du -sm "$tmp/root" | cut -f1) + 16) ))
    mkfs.ext4 -q -F -d "$tmp/root" "$tmp/part.img" "${mb}M"
    python3 - "$GRUB/boot.img" "$tmp/core.img" "$tmp/part.img" "$tmp/disk.img" <<'PY'
import struct, sys
boot, core = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
part = open(sys.argv[3], "rb").read()
start = 2048  # partition 1 from 1 MiB; boot.img and core.img live in the sectors before it
assert 512 + len(core) <= start * 512, "core.img does not fit before the partition"
disk = bytearray(start * 512 + len(part))
disk[:440] = boot[:440]
# Partition 1: active, type 0x83 (Linux), LBA start and length (the CHS fields unused).
disk[446:462] = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                            start, len(part) // 512)
disk[510:512] = b"\x55\xaa"
disk[512:512 + len(core)] = core
disk[start * 512:] = part
open(sys.argv[4], "wb").write(disk)
PY
    publish "$tmp/disk.img" "$out" "$stamp"
    rm -rf "$tmp"
    log "built $out"
fi
printf 'GRUB_LINUX_DISK_IMAGE=%q\n' "$out"
