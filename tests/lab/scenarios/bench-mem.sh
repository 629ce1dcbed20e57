# description: benchmark (tests/bench/run; skips itself otherwise): VMM memory above the guest's RAM with L2 idle at its marker, berth vs QEMU -M microvm, 256 MiB
# timeout: 900
# needs: berth
# expect: BENCH-DONE mem
# reject: Kernel panic
# reject: KVM internal error
# With the guest idle after its marker, reads the VMM's /proc/PID/status (VmRSS, RssAnon,
# RssFile, RssShmem) and, from /proc/PID/smaps, the resident part of the guest RAM mapping
# (the mapping of 256 MiB or more). Prints per run:
#   BENCH mem_overhead_kb <vmm> <VmRSS - guest RAM resident>
#   BENCH mem_overhead_anon_kb <vmm> <RssAnon+RssShmem - guest RAM resident>
#   BENCH mem_rss_kb / mem_file_kb / mem_guest_kb <vmm> <kB>
[ -n "${BENCH_REPEATS:-}" ] || { echo "SKIP: benchmark; run it with tests/bench/run"; exit 0; }
[ -x "$BERTH" ] || { echo "BENCH-FAIL no berth binary in this lab image"; exit 1; }
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"

mkdir -p s
cat > s/scenario.sh <<'EOS'
echo "GUEST-IDLE used_kb=$(awk '/^MemTotal:/ {t=$2} /^MemFree:/ {f=$2} END {print t-f}' /proc/meminfo)"
sleep 600
EOS
l2_initrd s initrd
CMD="console=ttyS0 quiet panic=-1 l2.action=script l2.net=off"

field() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$2/status"; }
measure() {  # vmm command...
    vmm=$1; shift
    rm -f "out-$vmm.log"
    "$@" </dev/null > "out-$vmm.log" 2>&1 &
    pid=$!
    n=0
    while ! grep -q GUEST-IDLE "out-$vmm.log" && [ "$n" -lt 600 ]; do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5; n=$((n + 1))
    done
    if grep -q GUEST-IDLE "out-$vmm.log"; then
        sleep 3  # let the guest and the VMM settle
        rss=$(field VmRSS "$pid"); anon=$(field RssAnon "$pid")
        file=$(field RssFile "$pid"); shm=$(field RssShmem "$pid")
        guest=$(awk '/^[0-9a-f]+-[0-9a-f]+ / {sz = 0} /^Size:/ {sz = $2}
            /^Rss:/ {if (sz >= 262144) g += $2} END {print g + 0}' "/proc/$pid/smaps")
        echo "BENCH mem_rss_kb $vmm $rss"
        echo "BENCH mem_file_kb $vmm $file"
        echo "BENCH mem_guest_kb $vmm $guest"
        echo "BENCH mem_overhead_kb $vmm $((rss - guest))"
        echo "BENCH mem_overhead_anon_kb $vmm $((anon + shm - guest))"
        echo "MEM-DETAIL $vmm VmRSS=$rss RssAnon=$anon RssFile=$file RssShmem=$shm guest=$guest $(grep GUEST-IDLE "out-$vmm.log")"
    else
        echo "BENCH-FAIL $vmm: the guest never reached GUEST-IDLE"; tail -n 20 "out-$vmm.log"
    fi
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
}
i=0
while [ "$i" -lt "$BENCH_REPEATS" ]; do
    i=$((i + 1))
    measure berth "$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --cpus 1 --memory 256 \
        --cmdline "$CMD reboot=k"
    measure qemu "$QEMU" -accel kvm -cpu host -M microvm -m 256M -smp 1 -nodefaults \
        -no-user-config -nographic -serial stdio -no-reboot -kernel "$L2_KERNEL" \
        -initrd initrd -append "$CMD reboot=t"
done
echo "BENCH-DONE mem"
