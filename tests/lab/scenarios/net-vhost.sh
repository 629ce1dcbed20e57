# description: vhost-net carries the pod's traffic (BERTH_VHOST=on, confined berth): 3 x 8 MiB from L2 to a peer namespace in L1, counted at the receiver; the tap's counters move, the kernel's vhost worker does the work while berth has no virtio-net thread; survives a device reset (virtio_net unbind/bind in L2) and a guest reboot (the VM rebuilt on the same vhost fd after the uid drop); SIGTERM -> clean exit
# timeout: 400
# needs: berth
# expect: L1-VHOST-NET present
# expect: berth: network: vhost-net datapath, the kernel serves the NIC's queues, 1 queue pair\(s\) \(BERTH_VHOST=on\)
# expect: L2-TX1 rc=0
# expect: L2-RESET-REBOUND eth0
# expect: L2-TX2 rc=0
# expect: guest requested reset .*restarting the VM on the same disks and network
# expect: L2-TX3 rc=0
# expect: SINK 5001 bytes=8388608
# expect: SINK 5002 bytes=8388608
# expect: SINK 5003 bytes=8388608
# expect: TAP-COUNTERS-MOVED ok
# expect: VHOST-WORKER busy
# expect: NET-THREAD none
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
# reject: in-process datapath
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
. "$LAB_LIB/podnet.sh"
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"
lab_vhost
if [ -c /dev/vhost-net ]; then echo "L1-VHOST-NET present"; else echo "L1-VHOST-NET missing"; exit 1; fi

pod_network 10.78.0 1500
mkdir -p root/image root/volumes
dd if=/dev/zero of=root/volumes/mark.img bs=1M count=1 2>/dev/null
: > resolv.conf

# Receivers in the client namespace, one connection each; stdin held open by a fifo (busybox
# nc closes the connection when its stdin ends), bytes counted from what arrived.
for port in 5001 5002 5003; do
    mkfifo "hold$port"
    (sleep 390 > "hold$port" &)
    (incl nc -l -p "$port" < "hold$port" > "recv$port" 2>/dev/null) &
done

# L2: boot 1 sends, resets its NIC (driver unbind/bind), sends again, reboots; boot 2 sends.
mkdir -p l2s
cat > l2s/scenario.sh <<'EOS'
send() {  # port marker
    dd if=/dev/zero bs=64k count=128 2>/dev/null | nc 10.78.0.1 "$1"
    echo "$2 rc=$?"
}
if [ "$(head -c 8 /dev/vda)" != "booted1!" ]; then
    printf 'booted1!' | dd of=/dev/vda conv=fsync 2>/dev/null
    send 5001 L2-TX1
    dev=$(basename "$(readlink /sys/class/net/eth0/device)")
    echo "$dev" > /sys/bus/virtio/drivers/virtio_net/unbind
    echo "$dev" > /sys/bus/virtio/drivers/virtio_net/bind
    n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    udhcpc -i eth0 -q -f -n -t 5 -T 2 -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &&
        echo "L2-RESET-REBOUND eth0"
    send 5002 L2-TX2
    reboot -f
fi
send 5003 L2-TX3
echo L2-SENT-ALL
sleep 600
EOS
l2_initrd l2s initrd

ticks() {  # /proc/PID/task/TID or /proc/PID: utime + stime
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "$1/stat" 2>/dev/null
}
tapbytes() {
    inpod $IP -s link show dev berthtap0 | awk '/RX:/ { getline; rx = $1 } /TX:/ { getline; tx = $1 } END { print rx + tx }'
}

export BERTH_CONTROL_SOCKET=@berth-vhost
inpod env HOSTNAME=vm-0 BERTH_ROOT="$SCRATCH/root" RESOLV_CONF="$SCRATCH/resolv.conf" \
    KERNEL="$L2_KERNEL" INITRD="$SCRATCH/initrd" NO_VNC=1 BERTH_VHOST=on \
    BERTH_SHUTDOWN_TIMEOUT=60 KERNEL_CMDLINE="console=ttyS0 quiet panic=-1 l2.action=script" \
    "$BERTH" pod > berth.log 2>&1 </dev/null &
JOB=$!

# Once berth has opened vhost-net (its log says so; the tap exists by then), note the tap's
# counters and the vhost worker before the traffic: named vhost-<owner pid>, a kernel thread of
# its own up to Linux 6.3, a thread inside berth's process since 6.4 (L1 runs 6.12).
n=0; until grep -q 'datapath' berth.log || [ $n -ge 200 ]; do sleep 0.2; n=$((n + 1)); done
# The job is a subshell (inpod is a function): berth is the process named berth.
BERTH_PID=$(for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = berth ] && echo "${p#/proc/}"; done | head -n1)
echo "BERTH-PID ${BERTH_PID:-none}"
tap0=$(tapbytes)
worker=""
for p in /proc/[0-9]* /proc/"$BERTH_PID"/task/*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = "vhost-$BERTH_PID" ] && worker=$p
done
w0=$(ticks "$worker")
echo "VHOST-WORKER-FOUND ${worker:-none} ticks=$w0"

n=0
until grep -q L2-SENT-ALL berth.log || [ $n -ge 300 ]; do
    kill -0 "$BERTH_PID" 2>/dev/null || break
    sleep 1; n=$((n + 1))
done
sleep 2
tap1=$(tapbytes)
# The vhost worker after a reboot: same owner, so the same thread.
w1=$(ticks "$worker")
echo "TAP bytes_before=$tap0 bytes_after=$tap1"
[ $((tap1 - tap0)) -gt $((3 * 8388608)) ] && echo "TAP-COUNTERS-MOVED ok"
echo "VHOST-WORKER ticks_before=$w0 ticks_after=$w1"
[ -n "$w1" ] && [ "$w1" -gt "$w0" ] && echo "VHOST-WORKER busy"
nt=none
for t in /proc/$BERTH_PID/task/*; do
    name=$(cat "$t/comm" 2>/dev/null)
    echo "THREAD $name ticks=$(ticks "$t")"
    [ "$name" = virtio-net ] && nt=present
done
echo "NET-THREAD $nt"

kill -TERM "$BERTH_PID"
wait "$JOB"
echo "BERTH-EXIT rc=$?"
for port in 5001 5002 5003; do
    echo "SINK $port bytes=$(wc -c < "recv$port")"
done
grep -v '^\s*$' berth.log | grep -v '^L2-' | head -40
grep '^L2-\|guest requested' berth.log
