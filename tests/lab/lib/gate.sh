# The acceptance gate's pieces (berth-gate, firmware-gate-xfs): a cloud image served once over
# HTTP to berth started as the chart starts it, in a pod network namespace, with cloud-init
# user data holding an SSH key; SSH at the pod IP; berth's confinement checked in /proc.
# Source after podnet.sh, in $SCRATCH. Sets DBCLIENT, DROPBEARKEY; uses GATE_HOST (the pod's
# HOSTNAME) and GATE_SOCKET (berth's control socket, @name).

DBCLIENT=$(command -v /usr/local/bin/dbclient dbclient | head -n1)
DROPBEARKEY=$(command -v /usr/local/bin/dropbearkey dropbearkey | head -n1)
T0=$(cut -d' ' -f1 /proc/uptime)
at() { awk -v a="$(cut -d' ' -f1 /proc/uptime)" -v b="$T0" 'BEGIN{printf "%.0f", a-b}'; }

# gate_image NAME: sets img and size to the l1-disk NAME attached as a file's bytes
# (`l1-disk: NAME:file`), in L1 or (direct mode) from $LAB_DISK_<NAME>_FILE. L1 finds it by
# its virtio serial, NAME-file, which virtio-blk cuts at 20 characters: keep NAME to 15.
gate_image() {
    . "$LAB_LIB/l2.sh"
    img=$(lab_disk "$1:file") || exit 1
    if [ -b "$img" ]; then size=$(blockdev --getsize64 "$img"); else size=$(stat -c %s "$img"); fi
}

# gate_serve NAME: an HTTP server on the client side that serves $img once as /NAME.
gate_serve() {
    incl sh -c "{ printf 'HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: $size\r\n\r\n'; cat '$img'; } | nc -l -p 8080 >/dev/null" &
}

# gate_pod_files MARKER: resolv.conf, the ConfigMap files (user data with a fresh SSH key that
# prints MARKER-OK on the console; metadata) and the /image volume.
gate_pod_files() {
    mkdir -p root/image
    printf 'nameserver 10.78.0.53\nsearch gate.test\n' > resolv.conf
    "$DROPBEARKEY" -t ed25519 -f id_gate >/dev/null 2>&1
    pub=$("$DROPBEARKEY" -y -f id_gate | grep '^ssh-')
    cat > root/userdata <<EOU
#cloud-config
ssh_authorized_keys:
  - $pub
runcmd:
  - [sh, -c, 'echo "$1-\$(echo OK)" > /dev/console']
EOU
    printf '{ "uuid": "093772fe-d6a3-4eea-84bc-5966661a0c3e" }\n' > root/metadata
}

# start_berth N [VAR=value...]: berth pod with the chart's environment plus the given
# variables (IMG_SOURCE, IMG_TARGET, ...), its log in berthN.log, followed on stdout.
start_berth() {
    n=$1; shift
    # The log exists before tail starts: the background job's redirection may run later.
    : > "berth$n.log"
    inpod env HOSTNAME="$GATE_HOST" IMG_VCPU=1 IMG_RAM_MB=1024 \
        BERTH_SHUTDOWN_TIMEOUT=180 BERTH_ROOT="$SCRATCH/root" RESOLV_CONF="$SCRATCH/resolv.conf" \
        BERTH_CONTROL_SOCKET="$GATE_SOCKET" VNC_PASSWORD=lab-vnc "$@" "$BERTH" pod \
        >> "berth$n.log" 2>&1 </dev/null &
    BERTH_PID=$!
    tail -f "berth$n.log" & TAIL=$!
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
# wait_reboot: after the guest was told to reboot, waits until berth reports the second boot
# with its lease given, and prints GATE-REBOOTED with berth's status.
wait_reboot() {
    st=""
    for i in $(seq 1 400); do
        st=$(inpod env BERTH_CONTROL_SOCKET="$GATE_SOCKET" "$BERTH" status 2>/dev/null)
        case "$st" in *boots=2*lease_given=true*) break ;; esac
        kill -0 "$BERTH_PID" 2>/dev/null || break
        sleep 1
    done
    echo "GATE-REBOOTED $st"
}
stop_berth() {  # n
    kill -TERM $(pidof berth)
    wait "$BERTH_PID"; echo "GATE-EXIT$1 rc=$?"
    sleep 2; kill "$TAIL" 2>/dev/null  # tail polls once a second: let it print the last lines
}
