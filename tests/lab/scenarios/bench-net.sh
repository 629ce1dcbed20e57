# description: benchmark (tests/bench/run; skips itself otherwise): L2 sends BENCH_MIB MiB over TCP (dd | nc) through virtio-net and a tap to a busybox nc sink in L1, berth vs QEMU q35 + virtio-net-pci (tap, vhost=off)
# timeout: 1200
# needs: berth
# expect: BENCH-DONE net
# reject: Kernel panic
# reject: KVM internal error
# The tap bt0 is in L1's network namespace (the peer) with 10.0.9.1/24; the guest takes
# 10.0.9.2. One boot per VMM, BENCH_REPEATS transfers each; the guest times each transfer
# from the start of dd to nc's exit (busybox nc exits when the sink closes after EOF, so all
# data has arrived). Prints `BENCH net_tx_ms <vmm> <ms>` per transfer and `BENCH net_mib - N`.
[ -n "${BENCH_REPEATS:-}" ] || { echo "SKIP: benchmark; run it with tests/bench/run"; exit 0; }
[ -x "$BERTH" ] || { echo "BENCH-FAIL no berth binary in this lab image"; exit 1; }
IP=/usr/local/bin/ip2
[ -x "$IP" ] || { echo "BENCH-FAIL no iproute2 ip in this lab image"; exit 1; }
MIB=${BENCH_MIB:-64}
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"
. "$LAB_LIB/bench.sh"
echo "BENCH net_mib - $MIB"

$IP tuntap add dev bt0 mode tap || echo "BENCH-FAIL cannot create tap bt0"
$IP addr add 10.0.9.1/24 dev bt0
$IP link set bt0 up
# The sink: one connection at a time, everything to /dev/null.
rm -f sink.stop
( while [ ! -e sink.stop ]; do nc -l -p 5001 > /dev/null 2>&1; done ) &

mkdir -p s
cat > s/scenario.sh <<EOS
now_ms() { read -r up _ < /proc/uptime; echo \$(( \${up%.*} * 1000 + 1\${up#*.} * 10 - 1000 )); }
ip addr add 10.0.9.2/24 dev eth0; ip link set eth0 up
n=0; until ping -c 1 -W 1 10.0.9.1 >/dev/null 2>&1 || [ \$n -ge 30 ]; do n=\$((n + 1)); done
i=0
while [ \$i -lt $BENCH_REPEATS ]; do
    sleep 1
    t0=\$(now_ms)
    dd if=/dev/zero bs=64k count=$((MIB * 16)) 2>/dev/null | nc 10.0.9.1 5001 || echo "GUEST-NC-FAIL"
    t1=\$(now_ms)
    echo "GUEST-NET tx_ms=\$((t1 - t0))"
    i=\$((i + 1))
done
EOS
l2_initrd s initrd
CMD="console=ttyS0 quiet panic=-1 l2.action=script l2.net=off"

report() {  # vmm
    sed -n 's/.*GUEST-NET tx_ms=\([0-9]*\).*/\1/p' "out-$1.log" |
    while read -r t; do echo "BENCH net_tx_ms $1 $t"; done
    bench_rounds "$1" GUEST-NET GUEST-NC-FAIL "completed the transfer"
}
"$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --cpus 1 --memory 256 --net tap=bt0 \
    --cmdline "$CMD reboot=k" </dev/null > out-berth.log 2>&1
report berth
"$QEMU" -accel kvm -cpu host -M q35 -m 256M -smp 1 -nodefaults -no-user-config -nographic \
    -serial stdio -no-reboot -kernel "$L2_KERNEL" -initrd initrd -append "$CMD reboot=k" \
    -netdev tap,id=n0,ifname=bt0,script=no,downscript=no,vhost=off \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 </dev/null > out-qemu.log 2>&1
report qemu
touch sink.stop; nc 10.0.9.1 5001 </dev/null >/dev/null 2>&1  # ends the sink's last nc
$IP link del bt0
echo "BENCH-DONE net"
