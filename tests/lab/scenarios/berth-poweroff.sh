# description: ACPI: the guest powers off (S5 through the sleep control register) and berth exits 0 saying so; the kernel finds ACPI, PCI and no firmware errors
# timeout: 120
# needs: berth
# expect: L2-ACTION poweroff
# expect: berth: guest powered off
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
# reject: ACPI BIOS Error
# reject: PCI: Fatal
# reject: ACPI Error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
"$BERTH" vm --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --cpus 1 --memory 256 \
    --cmdline "console=ttyS0 quiet panic=-1 l2.action=poweroff" </dev/null
echo "BERTH-EXIT rc=$?"
