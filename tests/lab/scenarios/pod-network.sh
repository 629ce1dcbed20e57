# description: the pod entrypoint in a "pod" network namespace: an extra disk from /volumes, a guest reboot rebuilds the VM in the same process, the guest's DHCP lease over virtio-net (3 DNS servers, search list, MTU, hostname), the SSH banner at the pod IP from a client namespace, `berth status`, `berth console` round-trips a command to the guest's shell, `berth control reset`, SIGTERM -> ACPI power button -> clean exit, plumbing left to the pod namespace
# timeout: 300
# needs: berth
# expect: L2-FIRST-BOOT-REBOOTING
# expect: guest requested reset .*restarting the VM on the same disks and network
# expect: L2-SECOND-BOOT
# expect: L2-TABLET berth tablet
# expect: L2-NET eth0 192\.168\.254\.2/30
# expect: L2-MTU 1450
# expect: L2-DNS nameserver 10\.77\.0\.53 nameserver 10\.77\.0\.54 nameserver 10\.77\.0\.55 search pod\.test svc\.test cluster\.test
# expect: L2-HOSTNAME vm-0
# expect: STATUS state=running .*lease_given=true
# expect: BANNER SSH-2\.0-dropbear
# expect: VNC-BANNER RFB 003\.008
# expect: METRICS-AT-POD-IP boots_total=2
# expect: STATUS-JSON-METRICS "berth_vm_boots_total":2
# expect: BALLOON-INFLATED "actual_bytes":67108864
# expect: CONSOLE-OK
# expect: STATUS-AFTER-RESET state=running .*boots=3
# expect: BANNER-AFTER-RESET SSH-2\.0-dropbear
# expect: L2-POWER-BUTTON
# expect: berth: guest powered off
# expect: BERTH-EXIT rc=0
# expect: PLUMBING-LEFT-IN-POD br0\s*$
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
. "$LAB_LIB/podnet.sh"
command -v "$IP" >/dev/null || { echo "SKIP: no iproute2 ip in this lab image"; exit 0; }
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"

# The pod's network namespace and a client on its network (MTU 1450 like an overlay network).
pod_network 10.77.0 1450

mkdir -p root/image root/volumes
dd if=/dev/zero of=root/volumes/data.img bs=1M count=8 2>/dev/null
printf 'nameserver 10.77.0.53\nnameserver 10.77.0.54\nnameserver 10.77.0.55\nsearch pod.test svc.test cluster.test\noptions ndots:5\n' > resolv.conf

# First boot: the guest marks its extra disk (/volumes/data.img = vda) and reboots. Later boots
# print what DHCP gave them and wait for the power button.
mkdir -p l2s
cat > l2s/scenario.sh <<'EOS'
if [ "$(head -c 16 /dev/vda)" != "berth-boot-one!!" ]; then
    printf 'berth-boot-one!!' | dd of=/dev/vda conv=fsync 2>/dev/null
    echo L2-FIRST-BOOT-REBOOTING
    reboot -f
fi
echo L2-SECOND-BOOT
# The VNC tablet is in the VM rebuilt after the guest's reboot too.
echo "L2-TABLET $(cat /sys/class/input/event*/device/name 2>/dev/null | grep -x 'berth tablet')"
echo "L2-MTU $(cat /sys/class/net/eth0/mtu)"
echo "L2-DNS $(tr '\n' ' ' < /etc/resolv.conf | sed 's/ *$//')"
echo "L2-HOSTNAME $(hostname)"
# The serial console's shell for `berth console`: one command per line.
while read -r cmd < /dev/ttyS0; do eval "$cmd"; done
sleep 600
EOS
l2_initrd l2s initrd

export BERTH_CONTROL_SOCKET=@berth-lab
inpod env HOSTNAME=vm-0 BERTH_ROOT="$SCRATCH/root" RESOLV_CONF="$SCRATCH/resolv.conf" \
    KERNEL="$L2_KERNEL" INITRD="$SCRATCH/initrd" BERTH_SHUTDOWN_TIMEOUT=60 VNC_PASSWORD=lab-vnc \
    BERTH_METRICS=9100 \
    KERNEL_CMDLINE="console=ttyS0 quiet panic=-1 l2.action=script l2.ssh=1" \
    "$BERTH" pod </dev/null &
BERTH_PID=$!

# Wait for the lease (berth status says so), then reach the guest at the pod IP.
st=""
for i in $(seq 1 200); do
    st=$(inpod "$BERTH" status 2>/dev/null)
    case "$st" in *boots=2*lease_given=true*) break ;; esac
    kill -0 "$BERTH_PID" 2>/dev/null || break
    sleep 1
done
echo "STATUS $st"
ssh_banner() {
    for i in $(seq 1 60); do
        banner=$(incl sh -c 'echo | nc -w 3 10.77.0.2 22' 2>/dev/null | head -n1 | tr -d '\r')
        [ -n "$banner" ] && break
        sleep 1
    done
    echo "$banner"
}
echo "BANNER $(ssh_banner)"
# tcp/5900 stays in the pod: berth's VNC console answers there, not the guest.
echo "VNC-BANNER $(incl sh -c 'nc -w 3 10.77.0.2 5900 </dev/null' 2>/dev/null | head -c 12)"
# So does BERTH_METRICS's port: /metrics from the client namespace; the status carries the same.
echo "METRICS-AT-POD-IP $(incl wget -q -O - http://10.77.0.2:9100/metrics 2>/dev/null | sed -n 's/^berth_vm_boots_total /boots_total=/p')"
echo "STATUS-JSON-METRICS $(inpod "$BERTH" status --json | grep -o '"berth_vm_boots_total":[0-9]*')"
# The balloon: a 64 MiB target; the guest's driver inflates it and reports the actual size.
inpod "$BERTH" control balloon 64 && echo "CONTROL-BALLOON ok"
for i in $(seq 1 60); do
    b=$(inpod "$BERTH" status --json | grep -o '"actual_bytes":[0-9]*')
    [ "$b" = '"actual_bytes":67108864' ] && break
    sleep 1
done
echo "BALLOON-INFLATED $b after ${i}s"
inpod "$BERTH" control balloon 0 && echo "CONTROL-BALLOON-0 ok"

# `berth console` (stdin a pipe: no raw mode) types a command into the guest's serial shell and
# shows its output; Ctrl-] detaches. Only the guest's shell turns $((6*7)) into 42.
{ sleep 2; printf 'echo L2-CONSOLE-$((6*7))\r'; sleep 5; printf '\035'; } \
    | inpod "$BERTH" console > console.out 2>&1
echo "CONSOLE rc=$? $(tr -d '\r' < console.out | grep -a -c L2-CONSOLE-42) line(s) with the answer"
grep -aq 'L2-CONSOLE-42' console.out && grep -q detached console.out && echo CONSOLE-OK

# A reset through the control socket builds a third VM.
inpod "$BERTH" control reset && echo "CONTROL-RESET ok"
st=""
for i in $(seq 1 200); do
    st=$(inpod "$BERTH" status 2>/dev/null)
    case "$st" in *boots=3*lease_given=true*) break ;; esac
    sleep 1
done
echo "STATUS-AFTER-RESET $st"
echo "BANNER-AFTER-RESET $(ssh_banner)"

# Pod deletion: SIGTERM presses the power button; the guest powers off; berth exits 0.
# (busybox nsenter forks: signal berth itself, then wait for nsenter, which passes its status.)
kill -TERM $(pidof berth)
wait "$BERTH_PID"
echo "BERTH-EXIT rc=$?"
left=""
inpod $IP link show br0 >/dev/null 2>&1 && left="$left br0"
inpod $IP link show berthtap0 >/dev/null 2>&1 && left="$left berthtap0"
# berth drops CAP_NET_ADMIN before the VM runs, so it leaves its bridge (and nftables table) to
# die with the pod's namespace; a restarted berth replaces them (docs/security.md). The tap is
# not persistent: it goes when berth's descriptor closes.
echo "PLUMBING-LEFT-IN-POD$left"
kill "$POD" "$CLIENT" 2>/dev/null
