# Sourced by scenarios (". "$LAB_LIB/l2.sh""): helpers for the L2 test guest.

# l2_initrd DIR OUT: writes OUT, the test guest's initramfs ($L2_INITRD) with the files of DIR
# appended at / (flat: no subdirectories): DIR/scenario.sh is the script its /init runs with
# l2.action=script, other files are data for it. The kernel unpacks concatenated archives in
# order; the second is compressed so that it need not start on the 4-byte boundary an
# uncompressed cpio needs.
l2_initrd() {
    (cd "$1" && ls | cpio -o -H newc 2>/dev/null | gzip) > "$2.script.cpio"
    cat "$L2_INITRD" "$2.script.cpio" > "$2"
}

# lab_vhost: loads vhost-net in L1 (/dev/vhost-net appears). L1 boots without it: the kernel
# of the emulated L1 (then 6.1) died while berth used vhost-net (tests/lab/README.md), and a
# node without the device is worth covering too.
lab_vhost() {
    for m in vhost_iotlb vhost vhost_net; do
        insmod "/lib/modules/lab/$m.ko" 2>/dev/null
    done
    [ -c /dev/vhost-net ] || echo "LAB-NO-VHOST /dev/vhost-net missing after insmod"
}

# wait_for FILE MARKER SECONDS: until FILE contains MARKER (grep pattern); 1 after SECONDS.
wait_for() {
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1)); [ "$i" -gt $(($3 * 4)) ] && return 1
        sleep 0.25
    done
}

# lab_watch PID LABEL IFACE [STALL] [LOG]: in the background, while PID (a berth) runs, prints
# one progress line every 15 s (LABEL, IFACE's byte counters, and the last `L2-WATCH` line the
# guest wrote to LOG, its console, if given), so a long transfer is not taken
# for a stuck L1 by the lab's silence watchdog and a stuck one shows where it stands. When
# IFACE has carried less than 64 KiB in STALL seconds (default 90: TCP's retransmissions of a
# lost segment move a few bytes), prints berth's threads (state and kernel wait channel) and
# SIGKILLs it: a stalled guest or datapath ends the scenario with a diagnosis, not in a silent
# L1 kill. Sets WATCH to the watcher's pid.
lab_watch() {
    (
        mark=0 idle=0 t=0
        while kill -0 "$1" 2>/dev/null; do
            sleep 15; t=$((t + 15))
            kill -0 "$1" 2>/dev/null || break
            rx=$(cat "/sys/class/net/$3/statistics/rx_bytes") tx=$(cat "/sys/class/net/$3/statistics/tx_bytes")
            echo "LAB-WATCH $2 t=${t}s $3 rx=$rx tx=$tx"
            [ -z "${5:-}" ] || tr -d '\r' < "$5" | grep '^L2-WATCH' | tail -n 1
            if [ $((rx + tx - mark)) -lt 65536 ]; then idle=$((idle + 15)); else idle=0 mark=$((rx + tx)); fi
            if [ "$idle" -ge "${4:-90}" ]; then
                echo "LAB-STALL $2: $3 carried less than 64 KiB in ${idle}s; berth's threads (name, state, wchan, CPU ms in the last 5 s):"
                for task in /proc/"$1"/task/*; do
                    echo "$task $(sed 's/.*) //' "$task/stat" | cut -d' ' -f12,13)"
                done > cpu0; sleep 5
                while read -r task u s; do
                    now=$(sed 's/.*) //' "$task/stat" 2>/dev/null | cut -d' ' -f1,12,13)
                    echo "LAB-STALL   $(cat "$task/comm" 2>/dev/null) $(cat "$task/wchan" 2>/dev/null) $now" |
                        awk -v u="$u" -v s="$s" '{ printf "%s %s %s %s %s ms\n", $1, $2, $4, $3, ($5 + $6 - u - s) * 10 }'
                done < cpu0
                [ -z "${5:-}" ] || tr -d '\r' < "$5" | tail -n 15 | sed 's/^/LAB-STALL   guest: /'
                kill -KILL "$1"
                break
            fi
        done
    ) &
    WATCH=$!
}
