# description: firmware boot: berth runs Debian's SeaBIOS (no --kernel), which reads fw_cfg, assigns the virtio-blk BARs, finds the disk and runs its MBR boot code; the MBR writes a marker to COM1 and powers the VM off through the ACPI sleep register; then a GRUB disk (guest-images/grub-disk.sh): SeaBIOS loads GRUB's core.img through int 13h, GRUB prints through its own serial driver and powers off
# timeout: 180
# needs: berth
# l1-disk: grub-disk:file
# expect: SeaBIOS \(version
# expect: Found QEMU fw_cfg
# expect: QEMU fw_cfg DMA interface supported
# expect: sercon: using ioport 0x3f8
# expect: Found 2 cpu\(s\)
# expect: table\(50434146\)=
# expect: bar 0, addr febf8000
# expect: Booting from Hard Disk
# expect: BERTH-MBR-OK
# expect: FIRMWARE-EXIT rc=0
# expect: GRUB loading\.
# expect: BERTH-GRUB-OK
# expect: GRUB-EXIT rc=0
# reject: KVM internal error
# reject: No bootable device
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
BIOS=/usr/share/qemu/bios-256k.bin
[ -f "$BIOS" ] || { echo "SKIP: no $BIOS in this lab image"; exit 0; }
set -u
cd "$SCRATCH"

# A 1 MiB disk whose MBR (16-bit code at 0x7c00) writes BERTH-MBR-OK to COM1 with interrupts
# off (so SeaBIOS's serial console cannot interleave its pending text), then writes SLP_EN|S5
# (0x34) to berth's ACPI sleep register (port 0x600): the VM powers off.
#   cli; mov si,0x7c18; mov dx,0x3f8; l: lodsb; test al,al; jz d; out dx,al; jmp l
#   d: mov dx,0x600; mov al,0x34; out dx,al; h: hlt; jmp h
printf '\372\276\030\174\272\370\003\254\204\300\164\003\356\353\370\272\000\006\260\064\356\364\353\375\r\nBERTH-MBR-OK\r\n\000' > mbr.img
dd if=/dev/zero of=mbr.img bs=1 count=0 seek=510 2>/dev/null
printf '\125\252' >> mbr.img
dd if=/dev/zero of=mbr.img bs=1M count=0 seek=1 2>/dev/null

# The debug log (port 0x402) goes to a file: interleaved with the serial console on one
# terminal, the two garble each other.
start=$(date +%s)
BERTH_FIRMWARE_DEBUG=1 timeout 150 "$BERTH" vm --firmware "$BIOS" --disk mbr.img,format=raw \
    --cpus 2 --memory 128 --balloon off </dev/null 2>debug.log
echo "FIRMWARE-EXIT rc=$? seconds=$(( $(date +%s) - start ))"
echo "--- berth's stderr and the firmware's debug log:"
cat debug.log

# GRUB: the disk guest-images/grub-disk.sh built on the host (boot.img + core.img).
. "$LAB_LIB/l2.sh"
grub=$(lab_disk grub-disk:file) || exit 1
start=$(date +%s)
timeout 150 "$BERTH" vm --firmware "$BIOS" --disk "$grub,format=raw,readonly" --memory 128 \
    --balloon off </dev/null 2>grub-debug.log
echo "GRUB-EXIT rc=$? seconds=$(( $(date +%s) - start ))"
cat grub-debug.log
