# description: virtio-balloon free page reporting: a 512 MiB L2 guest fills and frees 240 MiB of tmpfs; with reporting berth's RSS falls back within seconds, with --balloon on,reporting=off or --balloon off it stays; a file kept across keeps its checksum; berth's idle CPU time over 10 s printed for each. The first boot also serves --metrics: the disk bytes scraped match what the guest's dd moved, the balloon's released bytes show the free page reports
# timeout: 420
# needs: berth
# expect: BAL-DATA-OK reporting=on
# expect: BAL-DATA-OK reporting=off
# expect: BAL-ON-OK
# expect: BAL-OFF-OK
# expect: BAL-DATA-OK reporting=none
# expect: BAL-NONE-OK
# expect: MET-DISK-OK
# expect: MET-BALLOON-OK
# reject: BAL-DATA-BAD
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"
mkdir -p s
# The guest: a 4 MiB file of random bytes kept across, 240 MiB written to a tmpfs and deleted.
# Each BAL-* marker is followed by a pause in which L1 samples berth's RSS.
cat > s/scenario.sh <<'EOS'
tag=$(sed -n 's/.*l2.tag=\([a-z]*\).*/\1/p' /proc/cmdline)
[ -d /sys/bus/virtio/drivers/virtio_balloon ] || echo "BAL-NO-DRIVER"
# With a disk (the metrics run): 32 MiB written and 16 MiB read, bypassing the page cache.
if [ -b /dev/vda ]; then
    dd if=/dev/zero of=/dev/vda bs=1M count=32 oflag=direct 2>/dev/null || echo "BAL-DD-FAILED write"
    dd if=/dev/vda of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null || echo "BAL-DD-FAILED read"
    echo "BAL-DISK wrote=33554432 read=16777216"
fi
head -c 4194304 /dev/urandom > /keep.bin
sum0=$(md5sum < /keep.bin)
echo "BAL-BASE"; sleep 4
mkdir -p /mnt/t && mount -t tmpfs -o size=300m t /mnt/t
dd if=/dev/zero of=/mnt/t/big bs=1M count=240 2>/dev/null
echo "BAL-PEAK"; sleep 4
rm /mnt/t/big && umount /mnt/t
echo "BAL-FREED"; sleep 12
sum1=$(md5sum < /keep.bin)
if [ "$sum0" = "$sum1" ]; then echo "BAL-DATA-OK reporting=$tag"; else echo "BAL-DATA-BAD reporting=$tag"; fi
echo "BAL-IDLE"; sleep 12
EOS
l2_initrd s initrd

# rss_mib PID: berth's resident memory in MiB (VmRSS: guest memory it holds and its own).
rss_mib() { awk '/^VmRSS:/ {print int($2 / 1024)}' "/proc/$1/status" 2>/dev/null; }
# cpu_ticks PID: user + system time of all of berth's threads, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null; }

# run TAG SPEC: boots the guest with --balloon SPEC; prints BAL-RSS with base, peak and the
# samples after the free, berth's CPU time while the guest idles, and the verdict.
run() {
    log=$SCRATCH/console-$1.log
    : > "$log"
    "$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --cpus 1 --memory 512 \
        --balloon "$2" $3 \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=k l2.action=script l2.net=off l2.tag=$1" \
        </dev/null >"$log" 2>&1 &
    pid=$!
    wait_for "$log" BAL-BASE 150 || { echo "BAL-$1-TIMEOUT base"; kill "$pid"; wait "$pid"; return; }
    sleep 2; base=$(rss_mib "$pid")
    [ -n "$3" ] && scrape metrics-base.txt
    wait_for "$log" BAL-PEAK 120 || { echo "BAL-$1-TIMEOUT peak"; kill "$pid"; wait "$pid"; return; }
    sleep 2; peak=$(rss_mib "$pid")
    wait_for "$log" BAL-FREED 60 || { echo "BAL-$1-TIMEOUT freed"; kill "$pid"; wait "$pid"; return; }
    samples="" fell=""
    for t in 1 2 3 4 5 6 7 8 9 10; do
        sleep 1
        r=$(rss_mib "$pid"); samples="$samples $r"
        if [ -z "$fell" ] && [ "$r" -lt $((peak - 150)) ]; then fell=$t; fi
    done
    after=$(rss_mib "$pid")
    [ -n "$3" ] && scrape metrics-after.txt
    wait_for "$log" BAL-IDLE 60
    c0=$(cpu_ticks "$pid"); sleep 10; c1=$(cpu_ticks "$pid")
    wait "$pid"; rc=$?
    grep -E "BAL-|L2-UP|berth:" "$log"
    echo "BAL-RSS reporting=$1 base_mib=$base peak_mib=$peak after_mib=$after samples_mib=[$samples ] fell_below_peak-150_after_s=${fell:-never} idle_cpu_ticks_10s=$((c1 - c0)) rc=$rc"
    if [ "$1" = on ]; then
        if [ -n "$fell" ] && [ "$after" -lt $((base + 80)) ]; then echo "BAL-ON-OK"
        else echo "BAL-ON-BAD: RSS did not fall back (peak $peak, after $after, base $base)"; fi
    else
        V=$(echo "$1" | tr a-z A-Z)
        if [ "$after" -ge $((peak - 30)) ]; then echo "BAL-$V-OK"
        else echo "BAL-$V-BAD: RSS fell without reporting (peak $peak, after $after)"; fi
    fi
}
# scrape FILE: /metrics of the running berth into $SCRATCH/FILE.
scrape() { wget -q -O "$SCRATCH/$1" http://127.0.0.1:9100/metrics || echo "MET-SCRAPE-FAILED $1"; }
# metric FILE SAMPLE: the value of one sample (name with labels, as printed).
metric() { awk -v n="$2" '$1 == n {print $2}' "$SCRATCH/$1"; }
# within A B PERCENT: A is within PERCENT % of B.
within() { awk -v a="$1" -v b="$2" -v p="$3" 'BEGIN {d = a - b; if (d < 0) d = -d; exit !(b > 0 && d * 100 <= b * p)}'; }

dd if=/dev/zero of=d.raw bs=1M count=0 seek=64 2>/dev/null
run on on "--disk d.raw,format=raw --metrics 127.0.0.1:9100"
w=$(metric metrics-base.txt 'berth_disk_bytes_total{disk="vda",op="write"}')
r=$(metric metrics-base.txt 'berth_disk_bytes_total{disk="vda",op="read"}')
wops=$(metric metrics-base.txt 'berth_disk_operations_total{disk="vda",op="write"}')
exits=$(awk '/^berth_vcpu_exits_total/ {s += $2} END {print s + 0}' "$SCRATCH/metrics-base.txt")
echo "MET-DISK write_bytes=${w:-none} (dd wrote 33554432) read_bytes=${r:-none} (dd read 16777216 + the kernel's partition scan) write_ops=${wops:-none} vcpu_exits=$exits"
if within "${w:-0}" 33554432 3 && within "${r:-0}" 16777216 5 && [ "$exits" -gt 0 ]; then
    echo "MET-DISK-OK"
else
    echo "MET-DISK-BAD"
fi
rep=$(metric metrics-after.txt 'berth_balloon_released_bytes_total{how="reporting"}')
rss=$(metric metrics-after.txt 'berth_resident_memory_bytes')
echo "MET-BALLOON released_by_reporting=${rep:-none} resident=${rss:-none}"
grep -E '^berth_(vm_|balloon_bytes|resident)' "$SCRATCH/metrics-after.txt"
if [ "${rep:-0}" -gt 157286400 ]; then echo "MET-BALLOON-OK"; else echo "MET-BALLOON-BAD"; fi
run off on,reporting=off
run none off
