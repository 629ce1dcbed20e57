# description: firmware boot of the Debian cloud image (guest-images/debian-cloud.sh installs GRUB for BIOS as grub-install would): SeaBIOS runs the image's GRUB from its MBR, GRUB loads Linux from the disk through SeaBIOS's virtio-blk driver, Linux finds the disk at the BAR SeaBIOS assigned and mounts its root; then SIGTERM presses the ACPI power button and the guest powers off
# timeout: 600
# needs: berth
# l1-disk: debian-cloud
# expect: Booting from Hard Disk
# expect: Linux version 6\.1\.
# expect: virtio_blk virtio\d+: \[vda\]
# expect: EXT4-fs \(vda1\): mounted filesystem
# expect: Welcome to GRUB
# expect: Loading Linux 6\.1\.
# expect: CLOUD-REACHED
# expect: berth: guest powered off
# expect: CLOUD-EXIT rc=0
# reject: KVM internal error
# reject: Kernel panic
# reject: No bootable device
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
BIOS=/usr/share/qemu/bios-256k.bin
[ -f "$BIOS" ] || { echo "SKIP: no $BIOS in this lab image"; exit 0; }
set -u
cd "$SCRATCH"

# The cached cloud image, attached to L1 as a virtio disk (snapshot: writes stay in L1).
# L1 sees the disk the image describes (raw); direct mode has the qcow2 file.
. "$LAB_LIB/l2.sh"
img=$(lab_disk debian-cloud) || exit 1
if [ "$LAB_MODE" = l1 ]; then fmt=raw; else fmt=qcow2; fi

# An image without boot code in its MBR (an old cache of guest-images/debian-cloud.sh, which
# once only configured GRUB) would have SeaBIOS run zeros: skip, loudly.
if [ "$fmt" = raw ]; then
    head -c 512 "$img" > mbr.bin
else
    qemu-img dd -f qcow2 -O raw if="$img" of=mbr.bin bs=512 count=1 >/dev/null 2>&1
fi
if [ -z "$(head -c 440 mbr.bin | tr -d '\000')" ]; then
    echo "SKIP: the image's MBR has no boot code (rebuild it: guest-images/debian-cloud.sh)"
    exit 0
fi

start=$(date +%s)
# The console goes to console.log and, as it comes, to the scenario's output (the lab's
# watchdog takes a scenario silent for 180 s for a stuck L1).
: > console.log
"$BERTH" vm --firmware "$BIOS" --disk "$img,format=$fmt" --memory 1024 --balloon off \
    --shutdown-timeout 60 </dev/null >> console.log 2>&1 &
pid=$!
tail -f console.log & TAIL=$!
# Wait for the login prompt on the serial console (the root file system is mounted long
# before), at most 420 s: only then is systemd-logind there to act on the power button; a
# press before it is lost, as on a real machine.
reached=
for i in $(seq 1 420); do
    if grep -q 'login:' console.log; then reached=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
[ -n "$reached" ] && echo "CLOUD-REACHED login prompt after $(( $(date +%s) - start )) s"
# SIGTERM: berth presses the ACPI power button (the GED's interrupt, on full ACPI hardware).
sleep 5
kill -TERM "$pid" 2>/dev/null
wait "$pid"
rc=$?
sleep 2; kill "$TAIL" 2>/dev/null  # tail polls once a second: let it print the last lines
echo "CLOUD-EXIT rc=$rc seconds=$(( $(date +%s) - start ))"
