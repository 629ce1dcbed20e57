#!/bin/sh
# description: the gate for an image berth cannot boot directly: the Debian cloud image in the RHEL family's layout (XFS root holding /boot, guest-images/debian-xfs.sh), in the pod's /image volume (berth-gate covers the download), booted by `berth pod` with BOOT=auto (the default): berth finds no kernel it can read, sees the disk's BIOS boot code and runs SeaBIOS, which runs the image's own GRUB, which loads Linux from XFS; cloud-init applies the user data from the config drive; SSH at the pod IP logs in with the user-data key; a guest reboot under the firmware gets its lease and SSH back; SIGTERM powers the guest off through the ACPI power button (exit 0); berth confined throughout
# timeout: 900
# needs: berth
# l1-disk: debian-xfs:file
# expect: root disk .*xfs-0\.qcow2 \(Created
# expect: berth: boot: BIOS firmware \S+ \(BOOT=auto: no direct boot: .*; the disk has BIOS boot code\)
# expect: Booting from Hard Disk
# expect: XFS \(vda1\): Mounting V5 Filesystem
# expect: BERTH-XFS-USERDATA-OK
# expect: GATE-BANNER SSH-2\.0-OpenSSH
# expect: GATE-LOGIN-OK xfs-0 root=xfs
# expect: GATE-CONFINED-1 threads=
# expect: restarting the VM on the same disks and network
# expect: GATE-REBOOTED state=running .*boots=2 lease_given=true
# expect: GATE-BANNER2 SSH-2\.0-OpenSSH
# expect: GATE-CONFINED-2 threads=
# expect: berth: guest powered off
# expect: GATE-EXIT1 rc=0
# reject: Kernel panic
# reject: KVM internal error
# reject: (?i)emergency mode
# reject: No bootable device
# reject: GATE-NOT-CONFINED
# reject: berth: seccomp: the
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
. "$LAB_LIB/podnet.sh"
if [ "$LAB_MODE" = l1 ]; then
    [ -x /usr/local/bin/ip2 ] && [ -x /usr/local/bin/dbclient ] ||
        { echo "SKIP: no ip2/dbclient in this lab image"; exit 0; }
fi
# Debian's SeaBIOS as L1 carries it (the pod image has it at BERTH_BIOS's default path).
BIOS=/usr/share/qemu/bios-256k.bin
[ -f "$BIOS" ] || { echo "SKIP: no $BIOS in this lab image"; exit 0; }
GATE_HOST=xfs-0 GATE_SOCKET=@berth-xfs
. "$LAB_LIB/gate.sh"
cd "$SCRATCH"
gate_image debian-xfs
pod_network 10.78.0
gate_pod_files BERTH-XFS-USERDATA
# The image in /image as a volume would hold it (a copy of the file's bytes: ~10 s in L1,
# where the download over HTTP costs berth-gate ~130 s).
dd if="$img" of=root/image/debian-12-cloud-xfs.qcow2 bs=1M 2>/dev/null
IMG="IMG_TARGET=debian-12-cloud-xfs.qcow2 BERTH_BIOS=$BIOS"

# Overlay, firmware boot, cloud-init, SSH with the user-data key.
start_berth 1 $IMG
wait_log berth1.log BERTH-XFS-USERDATA-OK 700 && echo "GATE-TIME userdata_marker=$(at)s"
echo "GATE-BANNER $(banner)"
echo "GATE-TIME ssh_banner=$(at)s"
ssh_run 'echo GATE-LOGIN-OK $(hostname) root=$(findmnt -no FSTYPE /)'
check_confined 1
# A guest reboot under the firmware: berth rebuilds the VM (a fresh ROM copy and fw_cfg), and
# SeaBIOS and GRUB run again.
ssh_run 'sudo systemctl reboot' >/dev/null
wait_reboot
echo "GATE-BANNER2 $(banner)"
echo "GATE-TIME rebooted=$(at)s"
check_confined 2
# SIGTERM: the ACPI power button; systemd-logind shuts the guest down and it powers off.
stop_berth 1
echo "GATE-TIME total=$(at)s"
kill "$POD" "$CLIENT" 2>/dev/null
