# Sourced by scenarios (". "$LAB_LIB/l2.sh""): helpers for the L2 test guest.

# l2_initrd DIR OUT: writes OUT, the test guest's initramfs ($L2_INITRD) with DIR/scenario.sh
# appended, the script its /init runs with l2.action=script. The kernel unpacks concatenated
# archives in order; the second is compressed so that it need not start on the 4-byte boundary
# an uncompressed cpio needs.
l2_initrd() {
    (cd "$1" && echo scenario.sh | cpio -o -H newc 2>/dev/null | gzip) > "$2.script.cpio"
    cat "$L2_INITRD" "$2.script.cpio" > "$2"
}
