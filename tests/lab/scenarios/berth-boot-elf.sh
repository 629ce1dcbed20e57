# description: berth boots the same L2 kernel as an uncompressed ELF vmlinux (64-bit entry set up by berth) with 2 vCPUs
# timeout: 150
# needs: berth vmlinux
# expect: berth: booting /lab/l2/vmlinux \(Elf\)
# expect: L2-UP cpus=2
# expect: berth: guest powered off
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
[ -n "${L2_VMLINUX:-}" ] && [ -e "$L2_VMLINUX" ] || { echo "SKIP: no ELF vmlinux in this lab image"; exit 0; }
"$BERTH" vm --kernel "$L2_VMLINUX" --initrd "$L2_INITRD" --cpus 2 --memory 256 \
    --cmdline "console=ttyS0 quiet panic=-1 l2.action=poweroff" </dev/null
echo "BERTH-EXIT rc=$?"
