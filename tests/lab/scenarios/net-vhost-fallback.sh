# description: without /dev/vhost-net (hidden in a private mount namespace): `--net ...,vhost=on` fails in one line with exit code 16 before booting; the default (auto) says in one line that the in-process datapath serves the NIC, and 8 MiB from L2 reach a receiver in L1 through berth's virtio-net thread
# timeout: 240
# needs: berth
# expect: VHOST-ON-EXIT rc=16 lines=1
# expect: berth: vhost=on but vhost-net is unusable: cannot open /dev/vhost-net: No such file or directory
# expect: berth: network: in-process datapath, 1 queue pair\(s\) \(vhost=auto; cannot open /dev/vhost-net: No such file or directory
# expect: L2-TX rc=0
# expect: SINK bytes=8388608
# expect: NET-THREAD busy
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
# reject: vhost-net datapath
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
IP=/usr/local/bin/ip2
[ -x "$IP" ] || IP=ip
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"

$IP tuntap add dev fb0 mode tap
$IP addr add 10.0.8.1/24 dev fb0
$IP link set fb0 up
mkfifo hold
(sleep 230 > hold &)
(nc -l -p 5001 < hold > recv 2>/dev/null) &

mkdir -p s
cat > s/scenario.sh <<'EOS'
ip addr add 10.0.8.2/24 dev eth0; ip link set eth0 up
n=0; until ping -c 1 -W 1 10.0.8.1 >/dev/null 2>&1 || [ $n -ge 30 ]; do n=$((n + 1)); done
dd if=/dev/zero bs=64k count=128 2>/dev/null | nc 10.0.8.1 5001
echo "L2-TX rc=$?"
EOS
l2_initrd s initrd

# /dev without vhost-net: a copy of the nodes berth needs, bound over /dev in a private mount
# namespace (the node is missing as on a host without the vhost_net module).
mkdir -p dev/net
for d in null zero urandom random kvm; do cp -a "/dev/$d" dev/; done
cp -a /dev/net/tun dev/net/
nodev() { unshare -m sh -c "mount --bind '$SCRATCH/dev' /dev && exec \"\$@\"" sh "$@"; }

CMD="console=ttyS0 quiet panic=-1 reboot=k l2.action=script l2.net=off"
nodev "$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --net tap=fb0,vhost=on \
    --cmdline "$CMD" </dev/null > on.log 2>&1
rc=$?
echo "VHOST-ON-EXIT rc=$rc lines=$(wc -l < on.log)"
cat on.log

ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "$1/stat" 2>/dev/null; }
nodev "$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --net tap=fb0 \
    --cmdline "$CMD" </dev/null > auto.log 2>&1 &
JOB=$!
# The virtio-net worker's CPU time, sampled until the guest is done (the job is a subshell:
# berth is the process named berth).
PID=""
n=0; while [ -z "$PID" ] && [ $n -lt 100 ]; do
    PID=$(for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = berth ] && echo "${p#/proc/}"; done | head -n1)
    sleep 0.1; n=$((n + 1))
done
net=0
while kill -0 "$PID" 2>/dev/null; do
    for t in /proc/$PID/task/*; do
        [ "$(cat "$t/comm" 2>/dev/null)" = virtio-net ] && { v=$(ticks "$t"); [ -n "$v" ] && net=$v; }
    done
    sleep 1
done
wait "$JOB"
echo "BERTH-EXIT rc=$?"
echo "NET-THREAD ticks=$net"
[ "$net" -gt 0 ] && echo "NET-THREAD busy"
echo "SINK bytes=$(wc -c < recv)"
grep -v '^\s*$' auto.log | head -30
$IP link del fb0
