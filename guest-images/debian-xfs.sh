#!/bin/bash
# The lab's Debian cloud image in the RHEL family's layout: an XFS root holding /boot (see
# guest-images/debian-cloud.sh, DEBIAN_CLOUD_LAYOUT=xfs). berth cannot read its kernel, so
# BOOT=auto boots it through SeaBIOS and the image's own GRUB.
# (Named so that its lab disk serial, debian-xfs-file, fits virtio-blk's 20 bytes.)
# Output (stdout, eval-able): DEBIAN_CLOUD_XFS_IMAGE=..., DEBIAN_CLOUD_XFS_ROOT_UUID=...,
# DEBIAN_CLOUD_XFS_KVER=...; cached in $BERTH_CACHE/debian-cloud-xfs/.
DEBIAN_CLOUD_LAYOUT=xfs exec "$(dirname "$0")/debian-cloud.sh"
