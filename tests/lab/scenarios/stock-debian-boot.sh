#!/bin/sh
# description: berth boots the unmodified Debian 12 cloud image (kernel, initramfs and command line from its own grub.cfg): systemd reaches its targets, cloud-init runs a NoCloud seed's runcmd and powers off
# timeout: 600
# needs: berth
# l1-disk: debian-cloud
# expect: berth: boot from disk: .*kernel /boot/vmlinuz-[0-9.]+-[0-9]+-cloud-amd64 .*grub\.cfg
# expect: berth: kernel command line: root=UUID=[0-9a-f-]{36} ro .*console=ttyS0,115200
# expect: Reached target basic\.target
# expect: berth: guest powered off
# expect: BERTH-CLOUD-INIT-OK
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
# reject: (?i)emergency mode
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
set -u
cd "$SCRATCH"

# The image: in L1 a virtio disk with serial debian-cloud (the outer QEMU discards writes), so
# the guest gets it raw and writable; in direct mode a pet overlay on the cached qcow2.
if [ "$LAB_MODE" = l1 ]; then
    # L1 has no virtio drivers loaded; the L2 initramfs carries them for the same kernel.
    mkdir -p mods && (cd mods && zcat "$L2_INITRD" | cpio -id 2>/dev/null)
    for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
        insmod "mods/lib/modules/$m.ko" 2>/dev/null
    done
    disk=
    for i in 1 2 3 4 5 6 7 8 9 10; do
        for b in /sys/block/vd*; do
            [ "$(cat "$b/serial" 2>/dev/null)" = debian-cloud ] && disk=/dev/${b##*/}
        done
        [ -n "$disk" ] && [ -b "$disk" ] && break
        sleep 1
    done
    [ -n "$disk" ] || { echo "STOCK-ERROR no disk with serial debian-cloud in L1"; exit 1; }
    root="$disk,format=raw"
else
    img=${LAB_DISK_DEBIAN_CLOUD:?the harness sets it from guest-images/debian-cloud.sh}
    "$BERTH" overlay create --backing "$img" pet.qcow2 || exit 1
    root="pet.qcow2,format=qcow2"
fi
echo "STOCK-DISK $root"

# A NoCloud seed whose runcmd (cloud-final, after multi-user.target) prints the marker
# (assembled at run time, so the user data itself never matches) and then powers the VM off.
# systemd's own status lines stop once a getty owns the serial console, so the marker is the
# evidence that the boot got past multi-user.target.
cat > user-data <<'EOF'
#cloud-config
ssh_genkeytypes: [ed25519]
runcmd:
  - [sh, -c, 'echo "BERTH-CLOUD-INIT-$(echo OK) $(systemctl is-system-running)" > /dev/console']
power_state:
  mode: poweroff
  delay: now
  message: berth stock image test done
EOF
printf 'instance-id: stock-debian-1\nlocal-hostname: stock-debian\n' > meta-data
"$BERTH" seed --format nocloud --userdata user-data --metadata meta-data \
    --hostname stock-debian --output seed.iso </dev/null || exit 1

"$BERTH" vm --cpus 2 --memory 1024 --disk "$root" --disk seed.iso,readonly,format=raw \
    --shutdown-timeout 120 </dev/null
echo "BERTH-EXIT rc=$?"
