# description: QEMU (-M microvm, KVM) boots the L2 kernel+initramfs: proves the lab end to end
# timeout: 120
# expect: L2-UP cpus=1
# expect: L2-ACTION reboot
# expect: QEMU-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
"$QEMU" -accel kvm -cpu host -M microvm -m 256M -smp 1 -nodefaults -no-user-config -nographic \
    -serial stdio -no-reboot -kernel "$L2_KERNEL" -initrd "$L2_INITRD" \
    -append "console=ttyS0 quiet panic=-1 reboot=t l2.action=reboot" </dev/null
echo "QEMU-EXIT rc=$?"
