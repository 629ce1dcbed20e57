# description: the guest's reset (reboot=k, no ACPI in berth yet) makes berth exit 0 on its own
# timeout: 120
# needs: berth
# expect: L2-ACTION reboot
# expect: (?i)berth: .*reset
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
# When berth gains ACPI this becomes the poweroff path: l2.action=poweroff, expect a power-off line.
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
"$BERTH" vm --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --cpus 1 --memory 256 \
    --cmdline "console=ttyS0 quiet panic=-1 reboot=k l2.action=reboot" </dev/null
echo "BERTH-EXIT rc=$?"
