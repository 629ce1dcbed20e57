# description: a dual-stack pod: the L2 guest configures IPv6 by itself (its kernel's SLAAC from berth's router advertisements: VM_IP6, default route via fe80::1, MTU), and a client reaches its SSH banner at the pod's IPv6 address (and at the pod's IPv4 one); then the same in an IPv6-only pod (no IPv4 on the bridge, no DHCPv4)
# timeout: 400
# needs: berth
# expect: DS L2-IPV6 fd62:6572:7468:0:[0-9a-f:]+/64
# expect: DS L2-ROUTE6 default via fe80::1
# expect: DS L2-MTU6 1450
# expect: DS BANNER6 SSH-2\.0-dropbear
# expect: DS BANNER4 SSH-2\.0-dropbear
# expect: DS BERTH-EXIT rc=0
# expect: V6ONLY L2-IPV6 fd62:6572:7468:0:[0-9a-f:]+/64
# expect: V6ONLY L2-ROUTE6 default via fe80::1
# expect: V6ONLY BANNER6 SSH-2\.0-dropbear
# expect: V6ONLY NO-IPV4-ON-BRIDGE
# expect: V6ONLY BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
. "$LAB_LIB/podnet.sh"
command -v "$IP" >/dev/null || { echo "SKIP: no iproute2 ip in this lab image"; exit 0; }
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"

# The guest brings eth0 up itself where there is no DHCPv4 (l2.net=off), waits for the
# address its kernel forms from the router advertisement, and reports it.
mkdir -p l2s
cat > l2s/scenario.sh <<'EOS'
tag=$(sed -n 's/.*l2\.tag=\([^ ]*\).*/\1/p' /proc/cmdline)
ip link set eth0 up
for i in $(seq 1 40); do
    a=$(ip -6 -o addr show dev eth0 scope global | grep -v tentative | awk '{print $4}' | head -n1)
    [ -n "$a" ] && break
    sleep 0.5
done
echo "$tag L2-IPV6 $a"
echo "$tag L2-ROUTE6 $(ip -6 route show default | head -n1)"
echo "$tag L2-MTU6 $(cat /proc/sys/net/ipv6/conf/eth0/mtu)"
sleep 600
EOS
l2_initrd l2s initrd
printf 'nameserver fd00:78::53\nnameserver 10.78.0.53\nsearch pod.test\n' > resolv.conf

# run_pod TAG NET: berth in the pod until the guest's SSH answers at the pod's IPv6 address
# (and IPv4 when NET is given), then SIGTERM. Marker lines carry TAG.
run_pod() {
    tag=$1 net=$2 l2net=""
    [ -z "$net" ] && l2net=" l2.net=off"
    mkdir -p "root-$tag/image"
    # berth's output (the guest's console with it) goes to a log, followed on stdout, so that
    # the guest's report can be waited for below.
    : > "pod-$tag.log"
    inpod env HOSTNAME=vm-0 BERTH_ROOT="$SCRATCH/root-$tag" RESOLV_CONF="$SCRATCH/resolv.conf" \
        KERNEL="$L2_KERNEL" INITRD="$SCRATCH/initrd" BERTH_SHUTDOWN_TIMEOUT=60 NO_VNC=1 \
        BERTH_CONTROL_SOCKET=@berth-lab-$tag \
        KERNEL_CMDLINE="console=ttyS0 quiet panic=-1 l2.action=script l2.ssh=1 l2.tag=$tag$l2net" \
        "$BERTH" pod </dev/null >> "pod-$tag.log" 2>&1 &
    BERTH_PID=$!
    tail -f "pod-$tag.log" & TAIL=$!
    banner=""
    for i in $(seq 1 120); do
        banner=$(incl sh -c 'echo | nc -w 3 2001:db8:78::2 22' 2>/dev/null | head -n1 | tr -d '\r')
        [ -n "$banner" ] && break
        sleep 1
    done
    echo "$tag BANNER6 $banner"
    if [ -n "$net" ]; then
        b4=$(incl sh -c "echo | nc -w 3 $net.2 22" 2>/dev/null | head -n1 | tr -d '\r')
        echo "$tag BANNER4 $b4"
    else
        # No IPv4 for the VM: no VM_GW on the bridge (nor an `ip berth` table, nor DHCPv4).
        [ -z "$(inpod $IP -4 -o addr show dev br0)" ] && echo "$tag NO-IPV4-ON-BRIDGE"
    fi
    # SSH can answer before the guest's script has reported its address, route and MTU (it
    # waits for the router advertisement's address first): wait for its last line.
    wait_for "pod-$tag.log" "$tag L2-MTU6" 60 || echo "$tag NO-L2-REPORT within 60 s"
    # (busybox nsenter forks: signal berth itself, then wait for nsenter, which passes its status.)
    kill -TERM $(pidof berth)
    wait "$BERTH_PID"
    rc=$?
    sleep 2; kill "$TAIL" 2>/dev/null  # tail polls once a second: let it print the last lines
    echo "$tag BERTH-EXIT rc=$rc"
}

pod_network 10.78.0 1450
pod_ipv6 2001:db8:78
run_pod DS 10.78.0
kill "$POD" "$CLIENT" 2>/dev/null
sleep 1

pod_network_v6only 2001:db8:78 1450
run_pod V6ONLY
kill "$POD" "$CLIENT" 2>/dev/null
