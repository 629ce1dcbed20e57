# description: guest reboots end the VM with the reset reason: Linux's default (the ACPI reset register), then a triple fault (reboot=t)
# timeout: 150
# needs: berth
# expect: berth: guest requested reset \(ACPI reset register\)
# expect: BERTH-EXIT-ACPI rc=0
# expect: berth: guest requested reset \(triple fault\)
# expect: BERTH-EXIT-TRIPLE rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
"$BERTH" vm --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --memory 256 \
    --cmdline "console=ttyS0 quiet panic=-1 l2.action=reboot" </dev/null
echo "BERTH-EXIT-ACPI rc=$?"
"$BERTH" vm --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --memory 256 \
    --cmdline "console=ttyS0 quiet panic=-1 reboot=t l2.action=reboot" </dev/null
echo "BERTH-EXIT-TRIPLE rc=$?"
