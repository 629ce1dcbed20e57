#!/bin/bash
# A 1 MiB raw disk that boots GRUB through a BIOS, for the firmware-boot lab scenario: GRUB's
# boot.img code in the MBR, core.img (grub-mkimage, Debian's grub-pc-bin) in the sectors after
# it, where boot.img and core.img's first sector look by default. core.img's embedded
# configuration prints BERTH-GRUB-OK through GRUB's own serial driver (COM1), then writes
# SLP_EN|S5 (0x34) to berth's ACPI sleep register (port 0x600): the VM powers off.
#
#   guest-images/grub-disk.sh     # prints GRUB_DISK_IMAGE=<path> (eval-able)
set -euo pipefail
GI_NAME=grub-disk.sh
GI_DIR=$(cd "$(dirname "$0")" && pwd)
. "$GI_DIR/lib.sh"
need grub-mkimage python3
GRUB=/usr/lib/grub/i386-pc
[ -f "$GRUB/boot.img" ] || die "$GRUB/boot.img missing: install grub-pc-bin (scripts/setup)"
d=$CACHE/grub-disk
mkdir -p "$d"
out=$d/grub-disk.img
stamp=$(stamp_of "$0" "$GRUB/boot.img" "$GRUB/kernel.img" "$(command -v grub-mkimage)")
if ! fresh "$out" "$stamp"; then
    tmp=$(mktemp -d "$d/tmp.XXXXXX")
    printf '%s\n' 'serial --unit=0 --speed=115200' 'terminal_output serial' \
        'echo BERTH-GRUB-OK' 'outb 0x600 0x34' > "$tmp/early.cfg"
    grub-mkimage -O i386-pc -p '(hd0)' -d "$GRUB" -c "$tmp/early.cfg" -o "$tmp/core.img" \
        biosdisk serial terminal echo iorw
    python3 - "$GRUB/boot.img" "$tmp/core.img" "$tmp/disk.img" <<'PY'
import sys
boot, core = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
disk = bytearray(1 << 20)
disk[:440] = boot[:440]
disk[510:512] = b"\x55\xaa"
disk[512:512 + len(core)] = core
open(sys.argv[3], "wb").write(disk)
PY
    publish "$tmp/disk.img" "$out" "$stamp"
    rm -rf "$tmp"
    log "built $out"
fi
printf 'GRUB_DISK_IMAGE=%q\n' "$out"
