# description: benchmark (tests/bench/run; skips itself otherwise): dd in L2 on a virtio-blk disk (a fresh qcow2 overlay on a raw base), sequential write with conv=fsync then read after dropping caches, berth vs QEMU q35 + virtio-blk-pci
# timeout: 1200
# needs: berth
# expect: BENCH-DONE disk
# reject: Kernel panic
# reject: KVM internal error
# One boot per VMM; inside it BENCH_REPEATS rounds, each on its own BENCH_MIB-MiB region (so
# every write allocates clusters, like the first writes to a pet overlay). Prints per round
# `BENCH disk_write_ms <vmm> <ms>` and `BENCH disk_read_ms <vmm> <ms>` (guest clock, 10 ms
# resolution) and `BENCH disk_mib - <BENCH_MIB>`.
[ -n "${BENCH_REPEATS:-}" ] || { echo "SKIP: benchmark; run it with tests/bench/run"; exit 0; }
[ -x "$BERTH" ] || { echo "BENCH-FAIL no berth binary in this lab image"; exit 1; }
MIB=${BENCH_MIB:-64}
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"
. "$LAB_LIB/bench.sh"
echo "BENCH disk_mib - $MIB"

mkdir -p s
cat > s/scenario.sh <<EOS
now_ms() { read -r up _ < /proc/uptime; echo \$(( \${up%.*} * 1000 + 1\${up#*.} * 10 - 1000 )); }
i=0
while [ \$i -lt $BENCH_REPEATS ]; do
    t0=\$(now_ms)
    dd if=/dev/zero of=/dev/vda bs=1M count=$MIB seek=\$((i * $MIB)) conv=fsync 2>/dev/null || echo "GUEST-DD-FAIL write"
    t1=\$(now_ms)
    sync; echo 3 > /proc/sys/vm/drop_caches
    t2=\$(now_ms)
    dd if=/dev/vda of=/dev/null bs=1M count=$MIB skip=\$((i * $MIB)) 2>/dev/null || echo "GUEST-DD-FAIL read"
    t3=\$(now_ms)
    echo "GUEST-DISK write_ms=\$((t1 - t0)) read_ms=\$((t3 - t2))"
    i=\$((i + 1))
done
EOS
l2_initrd s initrd
CMD="console=ttyS0 quiet panic=-1 l2.action=script l2.net=off"
SIZE=$((MIB * BENCH_REPEATS + 16))

fresh() {  # a sparse raw base and a fresh qcow2 overlay on it (qemu-img compatible)
    rm -f base.raw pet.qcow2
    dd if=/dev/zero of=base.raw bs=1M count=0 seek="$SIZE" 2>/dev/null
    "$BERTH" overlay create --backing "$SCRATCH/base.raw" --backing-format raw pet.qcow2 >/dev/null \
        || echo "BENCH-FAIL berth overlay create"
}
report() {  # vmm
    sed -n 's/.*GUEST-DISK write_ms=\([0-9]*\) read_ms=\([0-9]*\).*/\1 \2/p' "out-$1.log" |
    while read -r w r; do echo "BENCH disk_write_ms $1 $w"; echo "BENCH disk_read_ms $1 $r"; done
    bench_rounds "$1" GUEST-DISK GUEST-DD-FAIL "completed the disk round"
}
fresh
"$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --cpus 1 --memory 256 \
    --disk pet.qcow2,format=qcow2 --cmdline "$CMD reboot=k" </dev/null > out-berth.log 2>&1
report berth
fresh
"$QEMU" -accel kvm -cpu host -M q35 -m 256M -smp 1 -nodefaults -no-user-config -nographic \
    -serial stdio -no-reboot -kernel "$L2_KERNEL" -initrd initrd -append "$CMD reboot=k" \
    -drive file=pet.qcow2,format=qcow2,if=none,id=d0,cache=writeback,aio=threads \
    -device virtio-blk-pci,drive=d0 </dev/null > out-qemu.log 2>&1
report qemu
echo "BENCH-DONE disk"
