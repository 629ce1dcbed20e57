# description: the pod entrypoint with BOOT=auto (the default) on an image berth cannot boot directly (guest-images/grub-linux-disk.sh: a kernel file but no grub.cfg and no root file system to give Linux): berth says in one line that it boots through SeaBIOS and why, the image's own GRUB boots Linux from the pet overlay, the guest powers off, berth exits 0; then BOOT=direct on the same image fails with the direct path's one-line error (exit 5)
# timeout: 240
# needs: berth
# l1-disk: grub-linux-disk:file
# expect: boot: BIOS firmware \S+ \(BOOT=auto: no direct boot: \S+: no kernel arguments and no root file system found; found MBR: partition 1 \(Linux, 27 MiB\): ext4; the disk has BIOS boot code\)$
# expect: Booting from Hard Disk
# expect: BERTH-GRUB-LINUX
# expect: L2-UP
# expect: POD-AUTO-EXIT rc=0
# expect: POD-DIRECT-EXIT rc=5
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
BIOS=/usr/share/qemu/bios-256k.bin
[ -f "$BIOS" ] || { echo "SKIP: no $BIOS in this lab image"; exit 0; }
IP=/usr/local/bin/ip2
[ -x "$IP" ] || { echo "SKIP: no iproute2 ip in this lab image"; exit 0; }
. "$LAB_LIB/podnet.sh"
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"
disk=$(lab_disk grub-linux-disk:file) || exit 1
pod_network 10.79.0 1500
mkdir -p root/image root/volumes
dd if="$disk" of=root/image/grub-linux.img bs=1M 2>/dev/null
: > resolv.conf
run() {  # BOOT value, marker
    inpod env HOSTNAME=fw-0 IMG_TARGET=grub-linux.img IMG_VCPU=1 IMG_RAM_MB=256 BOOT="$1" \
        BERTH_BIOS="$BIOS" NO_VNC=1 BALLOON=off BERTH_ROOT="$SCRATCH/root" \
        RESOLV_CONF="$SCRATCH/resolv.conf" BERTH_CONTROL_SOCKET=@berth-fw \
        timeout 200 "$BERTH" pod </dev/null
    echo "$2 rc=$?"
}
run auto POD-AUTO-EXIT
run direct POD-DIRECT-EXIT
