# description: virtio-blk: L2 writes to a qcow2 pet overlay and an extra raw disk, a second boot on the same overlay reads both back, and the base is unchanged
# timeout: 240
# needs: berth
# expect: DISK-SIZE vda=131072 vdb=16384
# expect: DISK-SERIAL vda=berth-disk0 vdb=extra-1
# expect: DISK1-WRITE-OK
# expect: DISK2-READ vda=berth-pet-marker vdb=berth-extra-marker
# expect: DISK2-BASE base-image
# expect: BASE-UNCHANGED
# expect: BERTH-EXIT1 rc=0
# expect: BERTH-EXIT2 rc=0
# reject: Kernel panic
# reject: KVM internal error
# reject: I/O error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
set -u
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"

# The base: 64 MiB whose first bytes say "base-image". The pet overlay sits on it.
dd if=/dev/zero of=base.raw bs=1M count=64 2>/dev/null
printf 'base-image' | dd of=base.raw conv=notrunc 2>/dev/null
before=$(md5sum base.raw | cut -d' ' -f1)
"$BERTH" overlay create --backing "$SCRATCH/base.raw" pet.qcow2 || echo "OVERLAY-CREATE failed rc=$?"
dd if=/dev/zero of=extra.img bs=1M count=8 2>/dev/null

# The guest's part of each boot travels as /scenario.sh in a second initramfs (l2_initrd).
with_script() {  # name, script text
    mkdir -p "s$1"
    printf '%s\n' "$2" > "s$1/scenario.sh"
    l2_initrd "s$1" "initrd-$1"
}
with_script 1 '
echo "DISK-SIZE vda=$(cat /sys/block/vda/size) vdb=$(cat /sys/block/vdb/size)"
echo "DISK-SERIAL vda=$(cat /sys/block/vda/serial) vdb=$(cat /sys/block/vdb/serial)"
printf berth-pet-marker | dd of=/dev/vda bs=512 seek=2048 conv=fsync 2>/dev/null &&
printf berth-extra-marker | dd of=/dev/vdb bs=512 seek=10 conv=fsync 2>/dev/null &&
echo DISK1-WRITE-OK'
with_script 2 '
a=$(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -c 16)
b=$(dd if=/dev/vdb bs=512 skip=10 count=1 2>/dev/null | head -c 18)
echo "DISK2-READ vda=$a vdb=$b"
echo "DISK2-BASE $(head -c 10 /dev/vda)"'

boot() {  # n
    "$BERTH" vm --kernel "$L2_KERNEL" --initrd "initrd-$1" --memory 256 \
        --disk pet.qcow2 --disk extra.img,format=raw,serial=extra-1 \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=k l2.action=script l2.net=off" </dev/null
    echo "BERTH-EXIT$1 rc=$?"
}
boot 1
boot 2
after=$(md5sum base.raw | cut -d' ' -f1)
[ "$before" = "$after" ] && echo BASE-UNCHANGED || echo "BASE-CHANGED $before -> $after"
