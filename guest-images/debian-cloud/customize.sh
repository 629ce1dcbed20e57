#!/bin/bash
# mmdebstrap --customize-hook for guest-images/debian-cloud.sh: configures the Debian 12 root
# tree ($1) the way Debian's genericcloud image is configured, then rebuilds the initramfs.
# Runs on the host with the tree's /proc, /sys and /dev set up by mmdebstrap.
#   $1          the root tree
#   ROOT_UUID   the root file system's UUID (exported by debian-cloud.sh)
set -euo pipefail
r=$1
: "${ROOT_UUID:?}"

# fstab by UUID, as Debian's image does (its x-systemd.growfs needs growpart: left out).
cat > "$r/etc/fstab" <<EOF
UUID=$ROOT_UUID / ext4 rw,discard,errors=remount-ro 0 1
EOF
echo localhost > "$r/etc/hostname"
cat > "$r/etc/hosts" <<'EOF'
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
EOF
# ifupdown: cloud-init renders the NIC configuration into interfaces.d.
cat > "$r/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
EOF
mkdir -p "$r/etc/network/interfaces.d"

# cloud-init: seed drives only (berth's config-2 or NoCloud ISO), no network metadata probing.
cat > "$r/etc/cloud/cloud.cfg.d/01_berth_datasources.cfg" <<'EOF'
datasource_list: [ NoCloud, ConfigDrive, None ]
EOF

# Boot configuration as Debian's cloud images carry it: serial + VGA console, no boot menu.
# update-grub reads this; debian-cloud.sh runs it after this hook (grub-probe needs a device).
sed -e 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=0/' \
    -e 's/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT="console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"/' \
    "$r/usr/share/grub/default/grub" > "$r/etc/default/grub"
cat >> "$r/etc/default/grub" <<'EOF'
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
EOF

# The cloud kernel has virtio as modules: load them from the initramfs (MODULES=most would
# include them; listing them makes sure they are loaded even without udev coldplug).
printf '%s\n' virtio_pci virtio_blk virtio_net virtio_scsi sd_mod >> "$r/etc/initramfs-tools/modules"
chroot "$r" update-initramfs -u -k all >/dev/null

# A fresh machine identity per VM (systemd makes one at first boot), no build-time host keys
# (cloud-init generates them), no caches.
: > "$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id" "$r"/etc/ssh/ssh_host_*
rm -rf "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* "$r"/var/log/*.log "$r"/tmp/*
