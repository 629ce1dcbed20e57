# Sourced by scenarios (". "$LAB_LIB/l2.sh""): helpers for the L2 test guest.

# l2_initrd DIR OUT: writes OUT, the test guest's initramfs ($L2_INITRD) with the files of DIR
# appended at / (flat: no subdirectories): DIR/scenario.sh is the script its /init runs with
# l2.action=script, other files are data for it. The kernel unpacks concatenated archives in
# order; the second is compressed so that it need not start on the 4-byte boundary an
# uncompressed cpio needs.
l2_initrd() {
    (cd "$1" && ls | cpio -o -H newc 2>/dev/null | gzip) > "$2.script.cpio"
    cat "$L2_INITRD" "$2.script.cpio" > "$2"
}

# lab_vhost: loads vhost-net in L1 (/dev/vhost-net appears). L1 boots without it: the kernel
# of the emulated L1 (then 6.1) died while berth used vhost-net (tests/lab/README.md), and a
# node without the device is worth covering too.
lab_vhost() {
    for m in vhost_iotlb vhost vhost_net; do
        insmod "/lib/modules/lab/$m.ko" 2>/dev/null
    done
    [ -c /dev/vhost-net ] || echo "LAB-NO-VHOST /dev/vhost-net missing after insmod"
}

# wait_for FILE MARKER SECONDS: until FILE contains MARKER (grep pattern); 1 after SECONDS.
wait_for() {
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1)); [ "$i" -gt $(($3 * 4)) ] && return 1
        sleep 0.25
    done
}
