# description: multiqueue virtio-net with 2 vCPUs on both datapaths (vhost=off: berth's in-process worker; vhost=on: one vhost-net instance per pair): the guest sees 2 queue pairs (/sys/class/net/eth0/queues rx-0 rx-1 tx-0 tx-1, set by the driver's VQ_PAIRS_SET), then 2 rounds of 8 MiB guest -> L1 and 8 MiB L1 -> guest, counted at each receiver, with no reset
# timeout: 900
# needs: berth
# expect: berth: network: in-process datapath, 2 queue pair\(s\) \(vhost=off\)
# expect: MQ-DONE off queues=rx-0 rx-1 tx-0 tx-1 tx_ok=2 rx_ok=2
# expect: SINKS off 8388608 8388608
# expect: berth: network: vhost-net datapath, the kernel serves the NIC's queues, 2 queue pair\(s\) \(vhost=on\)
# expect: MQ-DONE on queues=rx-0 rx-1 tx-0 tx-1 tx_ok=2 rx_ok=2
# expect: SINKS on 8388608 8388608
# reject: Kernel panic
# reject: KVM internal error
# reject: triple fault
# reject: Fail to set num of queue pairs
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
IP=/usr/local/bin/ip2
[ -x "$IP" ] || IP=ip
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"
MIB8=8388608

# A multiqueue tap (berth opens one fd per queue pair on it).
$IP tuntap add dev mq0 mode tap multi_queue vnet_hdr
$IP addr add 10.0.7.1/24 dev mq0
$IP link set mq0 up

mkdir -p s
cat > s/scenario.sh <<'EOS'
ip addr add 10.0.7.2/24 dev eth0; ip link set eth0 up
n=0; until ping -c 1 -W 1 10.0.7.1 >/dev/null 2>&1 || [ $n -ge 30 ]; do n=$((n + 1)); done
q=$(ls /sys/class/net/eth0/queues | tr '\n' ' ' | sed 's/ *$//')
mkfifo /tmp/hold; (sleep 600 > /tmp/hold &)
tx_ok=0 rx_ok=0
for r in 1 2; do
    dd if=/dev/zero bs=64k count=128 2>/dev/null | nc 10.0.7.1 $((5000 + r)) && tx_ok=$((tx_ok + 1))
    got=$(nc -l -p $((6000 + r)) < /tmp/hold | wc -c)
    echo "L2-RX round=$r bytes=$got"
    [ "$got" = 8388608 ] && rx_ok=$((rx_ok + 1))
done
echo "L2-MQ queues=$q tx_ok=$tx_ok rx_ok=$rx_ok"
EOS
l2_initrd s initrd

for mode in ${NET_MQ_MODES:-off on}; do
    [ "$mode" = on ] && lab_vhost
    for r in 1 2; do
        rm -f "hold$r"; mkfifo "hold$r"
        (sleep 600 > "hold$r" &)
        (nc -l -p $((5000 + r)) < "hold$r" > "recv-$mode-$r" 2>/dev/null) &
    done
    "$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --cpus 2 --memory 384 \
        --net tap=mq0,vhost=$mode \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=k l2.action=script l2.net=off" \
        </dev/null > "out-$mode.log" 2>&1 &
    JOB=$!
    # L1 -> guest: once the guest listens on 600r (after its round-r send), send 8 MiB.
    for r in 1 2; do
        n=0
        until [ -s "recv-$mode-$r" ] && head -c $MIB8 /dev/zero | nc 10.0.7.2 $((6000 + r)) 2>/dev/null; do
            kill -0 "$JOB" 2>/dev/null || break
            n=$((n + 1)); [ $n -ge 600 ] && break
            sleep 1
        done
    done
    wait "$JOB"
    echo "BERTH-EXIT $mode rc=$?"
    echo "SINKS $mode $(wc -c < "recv-$mode-1") $(wc -c < "recv-$mode-2")"
    grep -E '^berth:|^L2-|triple|Fail to' "out-$mode.log"
    sed -n "s/^L2-MQ /MQ-DONE $mode /p" "out-$mode.log"
done
$IP link del mq0
