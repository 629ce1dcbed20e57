#!/bin/bash
# Builds the lab's L2 test guest initramfs: busybox-static, the virtio modules of the 6.1 kernel,
# udhcpc with a default.script, dropbear (+ its libraries and a host key) and a scriptable /init
# (guest-images/l2/init; see its header for the l2.* kernel command line knobs).
#
# Output (stdout, eval-able):  L2_KERNEL=...  L2_INITRD=...
# The initrd is padded to 512 bytes, so further cpio archives can be appended to it.
# Cached in $BERTH_CACHE/l2/ and rebuilt only when an input changes.
set -euo pipefail
GI_NAME=l2-initramfs.sh
. "$(dirname "$0")/lib.sh"
need busybox cpio gzip dropbear dropbearkey ldd sha256sum

eval "$("$GI_DIR/kernel.sh")"

MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk
         failover net_failover virtio_net virtio_balloon virtio_input button evdev)
BUSYBOX=$(command -v busybox)
DROPBEAR=$(command -v dropbear)

out_dir=$CACHE/l2
out=$out_dir/initrd.cpio.gz
mkdir -p "$out_dir"
stamp=$(stamp_of "$0" "$GI_DIR/lib.sh" "$GI_DIR/l2/init" "$GI_DIR/l2/udhcpc.script" "$KVER" \
    "$(dpkg-query -W -f='${Package}=${Version} ' busybox-static dropbear-bin 2>/dev/null || true)" \
    "$BUSYBOX" "$DROPBEAR")

emit() { printf 'L2_KERNEL=%q\nL2_INITRD=%q\n' "$VMLINUZ" "$out"; }

if fresh "$out" "$stamp"; then
    log "reusing $out"
    emit; exit 0
fi

log "building $out"
tmp=$(mktemp -d "$out_dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
r=$tmp/root
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc/dropbear,lib/modules,usr/share/udhcpc}

# busybox with one symlink per applet (made here: cheaper than --install at every boot)
install -m 755 "$BUSYBOX" "$r/bin/busybox"
"$BUSYBOX" --list-full | while read -r applet; do
    [ -e "$r/$applet" ] || ln -s /bin/busybox "$r/$applet"
done

for m in "${MODULES[@]}"; do
    f=$(find "$MODDIR/kernel" -name "$m.ko" | head -n1)
    if [ -n "$f" ]; then cp "$f" "$r/lib/modules/"; else log "note: module $m not in $KVER (skipped)"; fi
done

install -m 755 "$GI_DIR/l2/init" "$r/init"
install -m 755 "$GI_DIR/l2/udhcpc.script" "$r/usr/share/udhcpc/default.script"

# dropbear + shared libraries; a host key made now so the guest does not spend entropy on it
copy_with_libs "$r" "$DROPBEAR"
[ "$DROPBEAR" = /usr/sbin/dropbear ] || ln -sf "$DROPBEAR" "$r/usr/sbin/dropbear" 2>/dev/null || true
dropbearkey -t ed25519 -f "$r/etc/dropbear/dropbear_ed25519_host_key" >/dev/null 2>&1 \
    || die "dropbearkey failed"
cat > "$r/etc/passwd" <<'P'
root::0:0:root:/root:/bin/sh
P
echo 'root:x:0:' > "$r/etc/group"
echo '/bin/sh' > "$r/etc/shells"
echo 'berth-l2' > "$r/etc/hostname"

mkcpio "$r" "$tmp/initrd.cpio.gz" gzip || die "cpio/gzip of $r failed"
# Pad with zeros to a multiple of 512 bytes: the kernel only recognises a further (uncompressed)
# cpio archive appended after a compressed one if it starts 4-byte aligned, and it skips zeros.
# This lets scenarios append files: cat "$L2_INITRD" extra.cpio > initrd (see berth-disk.sh).
size=$(stat -c %s "$tmp/initrd.cpio.gz")
pad=$(( (512 - size % 512) % 512 ))
[ "$pad" -eq 0 ] || head -c "$pad" /dev/zero >> "$tmp/initrd.cpio.gz"
publish "$tmp/initrd.cpio.gz" "$out" "$stamp"
log "built $out ($(du -k "$out" | cut -f1) KiB)"
emit
