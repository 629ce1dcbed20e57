# description: (FAILS today: Linux double-faults when it enables interrupts, docs/firmware.md "Linux through GRUB") firmware boot of Linux: SeaBIOS runs GRUB from the disk's MBR (guest-images/grub-linux-disk.sh), GRUB reads the L2 kernel and initramfs from an ext4 partition through SeaBIOS's int 13h and boots them; Linux runs on the e820 map, ACPI tables and PCI BARs the firmware set up, and powers off through ACPI
# timeout: 240
# needs: berth
# l1-disk: grub-linux-disk:file
# expect: Booting from Hard Disk
# expect: BERTH-GRUB-LINUX
# expect: L2-UP
# expect: L2-ACTION poweroff
# expect: berth: guest powered off
# expect: LINUX-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
# reject: ACPI BIOS Error
# reject: ACPI Error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
BIOS=/usr/share/qemu/bios-256k.bin
[ -f "$BIOS" ] || { echo "SKIP: no $BIOS in this lab image"; exit 0; }
set -u
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"
disk=$(lab_disk grub-linux-disk:file) || exit 1
start=$(date +%s)
timeout 200 "$BERTH" vm --firmware "$BIOS" --disk "$disk,format=raw,readonly" --memory 256 \
    --balloon off </dev/null
echo "LINUX-EXIT rc=$? seconds=$(( $(date +%s) - start ))"
