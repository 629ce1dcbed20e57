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
GATE_HOST=gate-0 GATE_SOCKET=@berth-gate
. "$LAB_LIB/gate.sh"
cd "$SCRATCH"

# The image to serve: the cached qcow2 file's bytes (a disk in L1, a file in direct mode).
gate_image debian-cloud

# The pod's network namespace and a client on its network.
pod_network 10.78.0

# An HTTP server on the client side that serves the image once.
gate_serve

# The pod's files: resolv.conf, the ConfigMap files and the /image volume.
gate_pod_files BERTH-GATE-USERDATA

# One vCPU: long runs of a 2-vCPU Debian guest under the lab's emulated L1 have frozen (one
# vCPU waiting forever for an IPI to the other; once L1's own kernel died in KVM's vCPU path).
# berth-boot-2cpu covers SMP.
IMG="IMG_SOURCE=http://10.78.0.1:8080/debian-12-cloud.qcow2 IMG_TARGET=debian-12-cloud.qcow2"

# Boot 1: download, overlay, cloud-init, SSH with the user-data key, write a file.
start_berth 1 $IMG
wait_log berth1.log BERTH-GATE-USERDATA-OK 700 && echo "GATE-TIME userdata_marker=$(at)s"
echo "GATE-BANNER $(banner)"
echo "GATE-TIME ssh_banner=$(at)s"
out=$(ssh_run 'echo GATE-LOGIN-OK $(hostname); echo berth-persist | sudo tee /var/tmp/gate-persist >/dev/null; sync; sudo cloud-init query instance_id')
echo "$out" | grep GATE-LOGIN-OK
iid1=$(echo "$out" | tail -n1)
check_confined 1
stop_berth 1

# Boot 2: the same /image: the overlay is reused, the file is there, same cloud-init instance.
start_berth 2 $IMG
echo "GATE-BANNER2 $(banner)"
out=$(ssh_run 'cat /var/tmp/gate-persist; sudo cloud-init query instance_id')
echo "GATE-PERSISTED $(echo "$out" | head -n1)"
iid2=$(echo "$out" | tail -n1)
[ -n "$iid1" ] && [ "$iid1" = "$iid2" ] && echo "GATE-SAME-INSTANCE $iid1" || echo "GATE-NEW-INSTANCE $iid1 -> $iid2"
# A guest reboot rebuilds the VM inside the confined berth (KVM kept open, disks reopened as
# uid 65534 under Landlock, new vCPU and worker threads under their filters).
ssh_run 'sudo systemctl reboot' >/dev/null
wait_reboot
echo "GATE-BANNER3 $(banner)"
check_confined 2
stop_berth 2
echo "GATE-TIME total=$(at)s"
kill "$POD" "$CLIENT" 2>/dev/null
