# description: benchmark (tests/bench/run; skips itself otherwise): VMM start to the L2-UP marker, berth vs QEMU -M microvm, same kernel+initramfs, 1 vCPU, 256 MiB
# timeout: 900
# needs: berth
# expect: BENCH-DONE boot
# reject: Kernel panic
# reject: KVM internal error
# Prints `BENCH boot_ms <vmm> <ms>` (VMM process start to the L2-UP line on its serial
# console, as L1 sees it) and `BENCH boot_exit_ms <vmm> <ms>` (to the VMM's exit after the
# guest's reboot) per run. tests/bench/run sets BENCH_REPEATS when it copies this file.
[ -n "${BENCH_REPEATS:-}" ] || { echo "SKIP: benchmark; run it with tests/bench/run"; exit 0; }
[ -x "$BERTH" ] || { echo "BENCH-FAIL no berth binary in this lab image"; exit 1; }
cd "$SCRATCH"
. "$LAB_LIB/bench.sh"
now_ms() { read -r up _ < /proc/uptime; echo $(( ${up%.*} * 1000 + 1${up#*.} * 10 - 1000 )); }

timed() {  # vmm marker command... : prints BENCH lines for one run
    vmm=$1; marker=$2; shift 2
    t0=$(now_ms)
    "$@" </dev/null 2>&1 | while IFS= read -r line; do
        case "$line" in *"$marker"*) echo "BENCH boot_ms $vmm $(( $(now_ms) - t0 ))" ;; esac
        printf '%s\n' "$line" >> "out-$vmm.log"
    done
    echo "BENCH boot_exit_ms $vmm $(( $(now_ms) - t0 ))"
}
CMD="console=ttyS0 quiet panic=-1 l2.action=reboot l2.net=off"
i=0
while [ "$i" -lt "$BENCH_REPEATS" ]; do
    i=$((i + 1))
    timed berth L2-UP "$BERTH" vm --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --cpus 1 \
        --memory 256 --cmdline "$CMD reboot=k"
    timed qemu L2-UP "$QEMU" -accel kvm -cpu host -M microvm -m 256M -smp 1 -nodefaults \
        -no-user-config -nographic -serial stdio -no-reboot -kernel "$L2_KERNEL" \
        -initrd "$L2_INITRD" -append "$CMD reboot=t"
done
for v in berth qemu; do bench_rounds "$v" L2-UP "" "reached L2-UP"; done
echo "BENCH-DONE boot"
