# description: berth boots L2 with 2 vCPUs and 384 MiB; the guest sees both CPUs and the memory, a disk with one request queue per vCPU that both vCPUs write and read at once, and no hardware virtualization (VMX/SVM) unless berth vm --nested offers it
# timeout: 200
# needs: berth
# expect: L2-UP cpus=2 mem_kb=
# expect: MEM-OK
# expect: BERTH-EXIT rc=0
# expect: L2-VIRT-FLAGS default=0
# expect: L2-BLK-MQ default queues=2 io=ok
# expect: L2-VIRT-FLAGS nested=2
# expect: BERTH-EXIT-NESTED rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"
# The guest reports how many of its CPUs advertise VMX or SVM; the tag says which run it is.
mkdir -p s
cat > s/scenario.sh <<'EOS'
tag=$(sed -n 's/.*l2.tag=\([a-z]*\).*/\1/p' /proc/cmdline)
echo "L2-VIRT-FLAGS $tag=$(grep -cwE 'svm|vmx' /proc/cpuinfo)"
# The disk (first boot only): blk-mq makes one hardware context per virtio queue. Both vCPUs
# write their own half and read it back, at the same time.
if [ -e /sys/block/vda ]; then
    for c in 0 1; do
        dd if=/dev/urandom of=/tmp/w$c bs=64k count=16 2>/dev/null
        taskset -c $c dd if=/tmp/w$c of=/dev/vda bs=64k seek=$((c * 16)) conv=fsync 2>/dev/null &
    done
    wait
    # Drop the guest's page cache so the reads go to the device, again from both vCPUs.
    echo 3 > /proc/sys/vm/drop_caches
    for c in 0 1; do
        taskset -c $c dd if=/dev/vda of=/tmp/r$c bs=64k skip=$((c * 16)) count=16 2>/dev/null &
    done
    wait
    io=ok
    for c in 0 1; do cmp -s /tmp/w$c /tmp/r$c || io=bad$c; done
    echo "L2-BLK-MQ $tag queues=$(ls /sys/block/vda/mq | wc -l) io=$io"
fi
EOS
l2_initrd s initrd
dd if=/dev/zero of=disk.img bs=1M count=4 2>/dev/null
out=$SCRATCH/console.log
# tee: the harness sees the console live, and this script checks it afterwards.
{
    "$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --cpus 2 --memory 384 --disk disk.img,format=raw \
        --cmdline "console=ttyS0 quiet panic=-1 reboot=k l2.action=script l2.net=off l2.tag=default" </dev/null
    echo "BERTH-EXIT rc=$?"
} 2>&1 | tee "$out"
# MemTotal of a 384 MiB guest: less than 384 MiB (kernel + reserved), but not much less.
mem=$(sed -n 's/.*L2-UP cpus=[0-9]* mem_kb=\([0-9]*\).*/\1/p' "$out" | head -n1)
if [ -n "$mem" ] && [ "$mem" -ge 300000 ] && [ "$mem" -le 393216 ]; then
    echo "MEM-OK mem_kb=$mem"
else
    echo "MEM-BAD mem_kb=${mem:-none} (want 300000..393216 for --memory 384)"
fi
# --nested offers the host's VMX/SVM (L1's kvm_amd has nested=1) to the guest.
"$BERTH" vm --nested --kernel "$L2_KERNEL" --initrd initrd --cpus 2 --memory 384 \
    --cmdline "console=ttyS0 quiet panic=-1 reboot=k l2.action=script l2.net=off l2.tag=nested" </dev/null
echo "BERTH-EXIT-NESTED rc=$?"
