# description: berth boots L2 with 2 vCPUs and 384 MiB; the guest sees both CPUs and the memory
# timeout: 150
# needs: berth
# expect: L2-UP cpus=2 mem_kb=
# expect: MEM-OK
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
out=$SCRATCH/console.log
# tee: the harness sees the console live, and this script checks it afterwards.
{
    "$BERTH" vm --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --cpus 2 --memory 384 \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=k l2.action=reboot" </dev/null
    echo "BERTH-EXIT rc=$?"
} 2>&1 | tee "$out"
# MemTotal of a 384 MiB guest: less than 384 MiB (kernel + reserved), but not much less.
mem=$(sed -n 's/.*L2-UP cpus=[0-9]* mem_kb=\([0-9]*\).*/\1/p' "$out" | head -n1)
if [ -n "$mem" ] && [ "$mem" -ge 300000 ] && [ "$mem" -le 393216 ]; then
    echo "MEM-OK mem_kb=$mem"
else
    echo "MEM-BAD mem_kb=${mem:-none} (want 300000..393216 for --memory 384)"
fi
