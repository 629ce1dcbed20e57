# description: the lab's defect, for the record (tests/lab/README.md, "vhost-net and the emulated SVM"): 5 QEMU (q35, virtio-net-pci, vhost=on) and 5 berth (vhost=on) boots of the same L2 guest, each sending 16 MiB with nc through a tap to L1 and fetching 8 MiB; prints how many guests of each VMM finished, died or hung
# timeout: 1300
# needs: berth
# expect: STRESS-VHOST-TX qemu .* berth
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
IP=/usr/local/bin/ip2
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"
lab_vhost
$IP tuntap add dev bm0 mode tap
$IP addr add 10.0.10.1/24 dev bm0
$IP link set bm0 up
mkfifo hold
sleep 100000 > hold &
spid=$!
QEMU=${QEMU:-$(command -v qemu-system-x86_64)}
mkdir -p www && dd if=/dev/zero of=www/f bs=64k count=128 2>/dev/null
httpd -f -p 10.0.10.1:8080 -h "$SCRATCH/www" &
hpid=$!
mkdir -p s
cat > s/scenario.sh <<'EOS'
ip addr add 10.0.10.2/24 dev eth0; ip link set eth0 up
n=0; until ping -c 1 -W 1 10.0.10.1 >/dev/null 2>&1 || [ $n -ge 30 ]; do n=$((n + 1)); done
echo "G-PING n=$n"
disk() {
dd if=/dev/zero of=/dev/vda bs=1M count=32 oflag=direct 2>/dev/null || echo "MET-DD-FAILED write"
echo G-DDW
dd if=/dev/vda of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null || echo "MET-DD-FAILED read"
echo G-DDR
}
net() {
dd if=/dev/zero bs=64k count=256 2>/dev/null | nc 10.0.10.1 $(sed -n "s/.*st.port=\\([0-9]*\\).*/\\1/p" /proc/cmdline) || echo "MET-NC-FAILED tx"
echo G-NC
wget -q -O - http://10.0.10.1:8080/f | wc -c > /tmp/rx
echo "G-WGET $(cat /tmp/rx)"
}
case $(sed -n "s/.*st.io=\\([a-z]*\\).*/\\1/p" /proc/cmdline) in
dn) disk; net ;;
nd) net; disk ;;
n) net ;;
esac
echo "MET-GUEST-DONE"
EOS
l2_initrd s initrd
dd if=/dev/zero of=d.raw bs=1M count=0 seek=64 2>/dev/null
port=5100
run() { # vmm io (n: network; dn, nd: disk then network, network then disk)
    port=$((port + 1))
    (nc -l -p $port < hold 2>/dev/null | wc -c > "got$port") &
    echo "=== RUN vmm=$1 io=$2 port=$port"
    c="console=ttyS0 quiet panic=-1 reboot=k l2.action=script l2.net=off st.io=$2 st.port=$port"
    case $1 in
    qemu) timeout -s KILL 90 "$QEMU" -accel kvm -cpu host -M q35 -m 256M -smp 1 -nodefaults \
            -no-user-config -nographic -serial stdio -no-reboot -kernel "$L2_KERNEL" -initrd initrd \
            -append "$c" -netdev tap,id=n0,ifname=bm0,script=no,downscript=no,vhost=on \
            -device virtio-net-pci,netdev=n0 \
            -drive file=d.raw,format=raw,if=none,id=d0,cache=none,aio=threads -device virtio-blk-pci,drive=d0 \
            </dev/null > r.log 2>&1 ;;
    berth) timeout -s KILL 90 "$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --cpus 1 --memory 256 \
        --net "tap=bm0,vhost=on" --disk d.raw,format=raw --balloon off \
        --cmdline "$c" </dev/null > r.log 2>&1 ;;
    esac
    echo "rc=$?"
    grep -E "G-|MET-|triple|berth: guest|Oops|RIP|error" r.log | head -20 | sed -e 's/^/  /' -e 's/Kernel panic/kernel-panic/'
    if grep -q MET-GUEST-DONE r.log; then eval "ok_$1=\$((ok_$1 + 1))"; else eval "bad_$1=\$((bad_$1 + 1))"; fi
    sleep 1; echo "  sink got $(cat got$port)"
    dmesg | tail -n 2 | sed 's/^/  L1: /'
}
ok_qemu=0 bad_qemu=0 ok_berth=0 bad_berth=0
for i in 1 2 3 4 5; do run qemu n; run berth n; done
echo "STRESS-VHOST-TX qemu finished $ok_qemu died $bad_qemu, berth finished $ok_berth died $bad_berth"
kill "$spid" "$hpid" 2>/dev/null; $IP link del bm0
