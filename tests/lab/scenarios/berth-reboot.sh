# description: guest reboots end the VM with their reset reason: Linux's default on this platform (through the reset vector, where berth's stub pulses the i8042), the ACPI reset register (reboot=a) and a triple fault (reboot=t)
# timeout: 200
# needs: berth
# expect: berth: guest requested reset \(i8042 reset line\)
# expect: BERTH-EXIT-DEFAULT rc=0
# expect: berth: guest requested reset \(ACPI reset register\)
# expect: BERTH-EXIT-ACPI rc=0
# expect: berth: guest requested reset \(triple fault\)
# expect: BERTH-EXIT-TRIPLE rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
for how in DEFAULT:"" ACPI:reboot=a TRIPLE:reboot=t; do
    "$BERTH" vm --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --memory 256 \
        --cmdline "console=ttyS0 quiet panic=-1 ${how#*:} l2.action=reboot" </dev/null
    echo "BERTH-EXIT-${how%%:*} rc=$?"
done
