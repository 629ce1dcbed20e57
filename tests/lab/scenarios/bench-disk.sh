# description: benchmark (tests/bench/run; skips itself otherwise): fio in L2 on a virtio-blk disk (a qcow2 overlay, optionally raw): 4 KiB random read/write at queue depth 1 and 32, 1 MiB sequential read/write; berth vs QEMU q35 + virtio-blk-pci with aio=threads and aio=io_uring
# timeout: 2400
# needs: berth benchtools
# expect: BENCH-DONE disk
# reject: Kernel panic
# reject: KVM internal error
# reject: BENCH-FAIL
# BENCH_ROUNDS rounds (default 1) in which every configuration boots once, in turn
# (BENCH_DISK_CONFIGS, default `berth qemu-threads qemu-io_uring`:
# a qcow2 overlay on a raw base, as users run berth; add `berth-raw qemu-threads-raw
# qemu-io_uring-raw` for a raw disk, `berth-metrics` for berth serving /metrics, whose disk
# counters sit on every request: the cost of metrics), on a fresh disk. The guest first writes the whole
# BENCH_MIB-MiB region
# once (1 MiB writes, untimed), so every cluster is allocated and no timed job reads
# unallocated clusters or pays first allocation. Then BENCH_REPEATS times the six fio jobs on
# /dev/vda (libaio, direct=1, time-based: BENCH_FIO_SECS seconds each, fio's fixed random seed):
#   rr1 rr32   4 KiB randread, iodepth 1 and 32      (IOPS)
#   rw1 rw32   4 KiB randwrite, iodepth 1 and 32     (IOPS)
#   sr  sw     1 MiB sequential read and write, iodepth 4   (MiB/s)
# QEMU: cache=writeback, the durability berth has (host page cache, guest flush = fdatasync;
# docs/block.md); cache=none needs O_DIRECT, which L1's RAM file system does not have.
# Prints `BENCH disk_<job> <config> <value>`; a job with an error or no I/O prints BENCH-FAIL.
[ -n "${BENCH_REPEATS:-}" ] || { echo "SKIP: benchmark; run it with tests/bench/run"; exit 0; }
[ -x "$BERTH" ] || { echo "BENCH-FAIL no berth binary in this lab image"; exit 1; }
. "$LAB_LIB/l2.sh"
. "$LAB_LIB/bench.sh"
bench_need_tools
MIB=${BENCH_MIB:-128}
T=${BENCH_FIO_SECS:-3}
CPUS=${BENCH_CPUS:-1}
CONFIGS=${BENCH_DISK_CONFIGS:-berth qemu-threads qemu-io_uring}
R=$BENCH_REPEATS
ROUNDS=${BENCH_ROUNDS:-1}
cd "$SCRATCH"
echo "BENCH disk_mib - $MIB"
echo "BENCH disk_fio_secs - $T"

mkdir -p s
printf 'MIB=%s T=%s R=%s\n' "$MIB" "$T" "$R" > s/params
cat > s/scenario.sh <<'EOS'
. /params
f() { fio --filename=/dev/vda --direct=1 --ioengine=libaio --size=${MIB}M --minimal "$@" 2>&1; }
# Allocate every cluster of the region (untimed).
f --name=fill --rw=write --bs=1M --iodepth=4 > /tmp/fill
awk -F';' '{ exit !($5 == 0 && $47 > 0) }' /tmp/fill || { echo "GUEST-FIO-FAIL fill"; cat /tmp/fill; }
echo "GUEST-FILLED"
i=0
while [ $i -lt $R ]; do
    for job in rr1 rr32 rw1 rw32 sr sw; do
        case $job in
            rr*) a="--rw=randread --bs=4k --iodepth=${job#rr}" ;;
            rw*) a="--rw=randwrite --bs=4k --iodepth=${job#rw}" ;;
            sr) a="--rw=read --bs=1M --iodepth=4" ;;
            sw) a="--rw=write --bs=1M --iodepth=4" ;;
        esac
        f --name=$job $a --runtime=$T --time_based > /tmp/o
        # terse v3: 5 error, 6-9 read KiB, KiB/s, IOPS, ms; 47-50 the same for writes
        awk -F';' -v j=$job 'NF > 50 { printf "GUEST-FIO %s err=%s rkb=%s rbw=%s riops=%s wkb=%s wbw=%s wiops=%s\n", j, $5, $6, $7, $8, $47, $48, $49; ok = 1 }
            END { if (!ok) printf "GUEST-FIO %s err=nooutput\n", j }' /tmp/o
        grep -q ';' /tmp/o || head -n 5 /tmp/o
    done
    i=$((i + 1))
done
echo "GUEST-FIO-DONE"
sleep 2   # L1 reads the VMM's CPU times now
EOS
bench_initrd s initrd
CMD="console=ttyS0 quiet panic=-1 l2.action=script l2.net=off reboot=k"

fresh() {  # fmt: a raw disk, or a fresh qcow2 overlay on a sparse raw base
    rm -f base.raw pet.qcow2 disk.raw
    if [ "$1" = raw ]; then
        dd if=/dev/zero of=disk.raw bs=1M count=0 seek="$((MIB + 16))" 2>/dev/null
    else
        dd if=/dev/zero of=base.raw bs=1M count=0 seek="$((MIB + 16))" 2>/dev/null
        "$BERTH" overlay create --backing "$SCRATCH/base.raw" --backing-format raw pet.qcow2 >/dev/null \
            || echo "BENCH-FAIL berth overlay create"
    fi
}

report() {  # config
    tr -d '\r' < "out-$1.log" | grep '^GUEST-FIO ' > "res-$1"
    while read -r _ job err rkb rbw riops wkb wbw wiops; do
        err=${err#err=} rkb=${rkb#rkb=} rbw=${rbw#rbw=} riops=${riops#riops=}
        wkb=${wkb#wkb=} wbw=${wbw#wbw=} wiops=${wiops#wiops=}
        case $job in rr* | sr) kb=$rkb bw=$rbw iops=$riops ;; *) kb=$wkb bw=$wbw iops=$wiops ;; esac
        if [ "$err" != 0 ] || [ "${kb:-0}" -le 0 ] 2>/dev/null || [ -z "$kb" ]; then
            echo "BENCH-FAIL $1: fio $job: error $err, ${kb:-no} KiB transferred"
            continue
        fi
        case $job in
            s*) echo "BENCH disk_$job $1 $(awk -v b="$bw" 'BEGIN { printf "%.1f", b / 1024 }')" ;;
            *) echo "BENCH disk_$job $1 $iops" ;;
        esac
    done < "res-$1"
    for job in rr1 rr32 rw1 rw32 sr sw; do
        c=$(grep -c "^GUEST-FIO $job " "res-$1")
        [ "$c" = "$R" ] || echo "BENCH-FAIL $1: fio $job: $c of $R runs reported"
    done
    if grep -q GUEST-FIO-FAIL "out-$1.log" || ! grep -q GUEST-FILLED "out-$1.log"; then
        echo "BENCH-FAIL $1: the guest did not fill the disk"; tail -n 20 "out-$1.log"
    fi
}

# Rounds: the configurations take turns, one boot each per round, so that a burst of load
# on the shared machine does not fall on one configuration only.
round=0
while [ "$round" -lt "$ROUNDS" ]; do
    round=$((round + 1))
    for cfg in $CONFIGS; do
        t0=$(awk '{ print int($1) }' /proc/uptime)
        case $cfg in *-raw) fmt=raw file=disk.raw ;; *) fmt=qcow2 file=pet.qcow2 ;; esac
        fresh "$fmt"
        metrics=""
        [ "$cfg" = berth-metrics ] && metrics="--metrics 127.0.0.1:9109"
        case $cfg in
            berth | berth-raw | berth-metrics)
                # shellcheck disable=SC2086 # $metrics is empty or two words
                "$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --cpus "$CPUS" --memory 256 \
                    --disk "$file,format=$fmt" --cmdline "$CMD" $metrics </dev/null > "out-$cfg.log" 2>&1 &
                ;;
            qemu-threads* | qemu-io_uring*)
                aio=${cfg#qemu-}; aio=${aio%-raw}
                "$QEMU" -accel kvm -cpu host -M q35 -m 256M -smp "$CPUS" -name l2,debug-threads=on -nodefaults \
                    -no-user-config -nographic -serial stdio -no-reboot -kernel "$L2_KERNEL" -initrd initrd \
                    -append "$CMD" \
                    -drive "file=$file,format=$fmt,if=none,id=d0,cache=writeback,aio=$aio" \
                    -device virtio-blk-pci,drive=d0 </dev/null > "out-$cfg.log" 2>&1 &
                ;;
            *) echo "BENCH-FAIL unknown configuration $cfg"; continue ;;
        esac
        vpid=$!
        bench_wait_for GUEST-FILLED "out-$cfg.log" "$vpid" 600 && echo "BENCH-CPU $cfg start $(bench_cpu "$vpid")"
        bench_wait_for GUEST-FIO-DONE "out-$cfg.log" "$vpid" $((R * 6 * (T + 30))) &&
            echo "BENCH-CPU $cfg end $(bench_cpu "$vpid")"
        bench_wait "$vpid" 120 "$cfg"
        report "$cfg"
        echo "BENCH disk_config_secs $cfg $(( $(awk '{ print int($1) }' /proc/uptime) - t0 ))"
    done
done
rm -f base.raw pet.qcow2 disk.raw
echo "BENCH-DONE disk"
