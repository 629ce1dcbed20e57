#!/bin/sh
# description: the Berth acceptance test: berth started as the chart starts it, in a pod network namespace with its own resolv.conf, /userdata, /metadata and /image, fetches the unmodified Debian cloud image over HTTP, makes the pet overlay, boots the image's own kernel; cloud-init applies the user data; SSH answers at the pod IP and a login with the user-data key runs a command; a file written over SSH survives SIGTERM and a second berth on the same /image, which cloud-init treats as the same instance; berth runs confined (uid 65534, no capabilities, no_new_privs, a seccomp filter on every thread, checked in /proc after each boot), and a guest reboot inside the confined berth gets its lease and SSH back
# timeout: 900
# needs: berth
# l1-disk: debian-cloud:file
# expect: berth: downloaded http://10\.78\.0\.1:8080/
# expect: root disk .*gate-0\.qcow2 \(Created
# expect: berth: boot: .*kernel /boot/vmlinuz-[0-9.]+-[0-9]+-cloud-amd64 .*grub\.cfg
# expect: BERTH-GATE-USERDATA-OK
# expect: GATE-BANNER SSH-2\.0-OpenSSH
# expect: GATE-LOGIN-OK gate-0
# expect: berth: confined: uid 65534 gid 65534, no capabilities, no_new_privs, landlock .*seccomp on
# expect: GATE-CONFINED-1 threads=
# expect: GATE-EXIT1 rc=0
# expect: root disk .*gate-0\.qcow2 \(Reused
# expect: GATE-PERSISTED berth-persist
# expect: GATE-SAME-INSTANCE
# expect: restarting the VM on the same disks and network
# expect: GATE-REBOOTED state=running .*boots=2 lease_given=true
# expect: GATE-BANNER3 SSH-2\.0-OpenSSH
# expect: GATE-CONFINED-2 threads=
# expect: GATE-EXIT2 rc=0
# reject: Kernel panic
# reject: KVM internal error
# reject: (?i)emergency mode
# reject: soft lockup
# reject: rcu_preempt detected stalls
# reject: GATE-NOT-CONFINED
# reject: berth: seccomp: the
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
. "$LAB_LIB/podnet.sh"
if [ "$LAB_MODE" = l1 ]; then
    [ -x /usr/local/bin/ip2 ] && [ -x /usr/local/bin/dbclient ] ||
        { echo "SKIP: no ip2/dbclient in this lab image"; exit 0; }
fi
DBCLIENT=$(command -v /usr/local/bin/dbclient dbclient | head -n1)
DROPBEARKEY=$(command -v /usr/local/bin/dropbearkey dropbearkey | head -n1)
cd "$SCRATCH"
T0=$(cut -d' ' -f1 /proc/uptime)
at() { awk -v a="$(cut -d' ' -f1 /proc/uptime)" -v b="$T0" 'BEGIN{printf "%.0f", a-b}'; }

# The image to serve: the cached qcow2 file's bytes (a disk in L1, a file in direct mode).
if [ "$LAB_MODE" = l1 ]; then
    # L1's /init loaded virtio_pci and virtio_blk (built for L1's kernel, l1-image.sh).
    img=
    for i in $(seq 1 10); do
        for b in /sys/block/vd*; do
            [ "$(cat "$b/serial" 2>/dev/null)" = debian-cloud-file ] && img=/dev/${b##*/}
        done
        [ -n "$img" ] && [ -b "$img" ] && break
        sleep 1
    done
    [ -n "$img" ] || { echo "GATE-ERROR no disk with serial debian-cloud-file in L1"; exit 1; }
    size=$(blockdev --getsize64 "$img")
else
    img=${LAB_DISK_DEBIAN_CLOUD_FILE:?the harness sets it}
    size=$(stat -c %s "$img")
fi

# The pod's network namespace and a client on its network.
pod_network 10.78.0

# An HTTP server on the client side that serves the image once.
incl sh -c "{ printf 'HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: $size\r\n\r\n'; cat '$img'; } | nc -l -p 8080 >/dev/null" &

# The pod's files: resolv.conf, the ConfigMap files and the /image volume.
mkdir -p root/image
printf 'nameserver 10.78.0.53\nsearch gate.test\n' > resolv.conf
"$DROPBEARKEY" -t ed25519 -f id_gate >/dev/null 2>&1
pub=$("$DROPBEARKEY" -y -f id_gate | grep '^ssh-')
cat > root/userdata <<EOU
#cloud-config
ssh_authorized_keys:
  - $pub
runcmd:
  - [sh, -c, 'echo "BERTH-GATE-USERDATA-\$(echo OK)" > /dev/console']
EOU
printf '{ "uuid": "093772fe-d6a3-4eea-84bc-5966661a0c3e" }\n' > root/metadata

# One vCPU: long runs of a 2-vCPU Debian guest under the lab's emulated L1 have frozen (one
# vCPU waiting forever for an IPI to the other; once L1's own kernel died in KVM's vCPU path).
# berth-boot-2cpu covers SMP.
start_berth() {  # n: the chart's environment
    # The log exists before tail starts: the background job's redirection may run later.
    : > "berth$1.log"
    inpod env HOSTNAME=gate-0 IMG_SOURCE=http://10.78.0.1:8080/debian-12-cloud.qcow2 \
        IMG_TARGET=debian-12-cloud.qcow2 IMG_VCPU=1 IMG_RAM_MB=1024 \
        BERTH_SHUTDOWN_TIMEOUT=180 BERTH_ROOT="$SCRATCH/root" RESOLV_CONF="$SCRATCH/resolv.conf" \
        BERTH_CONTROL_SOCKET=@berth-gate VNC_PASSWORD=lab-vnc "$BERTH" pod >> "berth$1.log" 2>&1 </dev/null &
    BERTH_PID=$!
    tail -f "berth$1.log" & TAIL=$!
}
wait_log() {  # file, pattern, seconds
    for i in $(seq 1 "$3"); do grep -q "$2" "$1" && return 0; sleep 1; done; return 1
}
ssh_run() {
    incl env HOME="$SCRATCH" "$DBCLIENT" -y -y -i "$SCRATCH/id_gate" debian@10.78.0.2 "$1" 2>/dev/null
}
banner() {
    for i in $(seq 1 300); do
        b=$(incl sh -c 'echo | nc -w 3 10.78.0.2 22' 2>/dev/null | head -n1 | tr -d '\r')
        [ -n "$b" ] && { echo "$b"; return; }
        sleep 2
    done
}
# Every thread of the running berth: uid 65534, CapEff 0, NoNewPrivs 1, Seccomp 2 (filter).
check_confined() {  # n
    pid=$(pidof berth)
    bad="" n=0
    for t in /proc/$pid/task/*; do
        st=$(awk '/^Uid:/{u=$2} /^CapEff:/{c=$2} /^NoNewPrivs:/{p=$2} /^Seccomp:/{s=$2}
                  END{print u"/"c"/"p"/"s}' "$t/status")
        n=$((n + 1))
        [ "$st" = 65534/0000000000000000/1/2 ] || bad="$bad $(cat "$t/comm"):$st"
    done
    [ "$n" -gt 3 ] && [ -z "$bad" ] && echo "GATE-CONFINED-$1 threads=$n" || echo "GATE-NOT-CONFINED-$1 threads=$n$bad"
}
stop_berth() {  # n
    kill -TERM $(pidof berth)
    wait "$BERTH_PID"; echo "GATE-EXIT$1 rc=$?"
    sleep 2; kill "$TAIL" 2>/dev/null  # tail polls once a second: let it print the last lines
}

# Boot 1: download, overlay, cloud-init, SSH with the user-data key, write a file.
start_berth 1
wait_log berth1.log BERTH-GATE-USERDATA-OK 700 && echo "GATE-TIME userdata_marker=$(at)s"
echo "GATE-BANNER $(banner)"
echo "GATE-TIME ssh_banner=$(at)s"
out=$(ssh_run 'echo GATE-LOGIN-OK $(hostname); echo berth-persist | sudo tee /var/tmp/gate-persist >/dev/null; sync; sudo cloud-init query instance_id')
echo "$out" | grep GATE-LOGIN-OK
iid1=$(echo "$out" | tail -n1)
check_confined 1
stop_berth 1

# Boot 2: the same /image: the overlay is reused, the file is there, same cloud-init instance.
start_berth 2
echo "GATE-BANNER2 $(banner)"
out=$(ssh_run 'cat /var/tmp/gate-persist; sudo cloud-init query instance_id')
echo "GATE-PERSISTED $(echo "$out" | head -n1)"
iid2=$(echo "$out" | tail -n1)
[ -n "$iid1" ] && [ "$iid1" = "$iid2" ] && echo "GATE-SAME-INSTANCE $iid1" || echo "GATE-NEW-INSTANCE $iid1 -> $iid2"
# A guest reboot rebuilds the VM inside the confined berth (KVM kept open, disks reopened as
# uid 65534 under Landlock, new vCPU and worker threads under their filters).
ssh_run 'sudo systemctl reboot' >/dev/null
st=""
for i in $(seq 1 400); do
    st=$(inpod env BERTH_CONTROL_SOCKET=@berth-gate "$BERTH" status 2>/dev/null)
    case "$st" in *boots=2*lease_given=true*) break ;; esac
    kill -0 "$BERTH_PID" 2>/dev/null || break
    sleep 1
done
echo "GATE-REBOOTED $st"
echo "GATE-BANNER3 $(banner)"
check_confined 2
stop_berth 2
echo "GATE-TIME total=$(at)s"
kill "$POD" "$CLIENT" 2>/dev/null
