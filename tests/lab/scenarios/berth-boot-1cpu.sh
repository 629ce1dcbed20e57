# description: berth boots the L2 kernel+initramfs with 1 vCPU and exits when the guest reboots
# timeout: 120
# needs: berth
# expect: L2-UP cpus=1
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
"$BERTH" vm --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --cpus 1 --memory 256 \
    --cmdline "console=ttyS0 quiet panic=-1 reboot=k l2.action=reboot" </dev/null
echo "BERTH-EXIT rc=$?"
