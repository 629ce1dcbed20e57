# Sourced by the bench-* scenarios (". "$LAB_LIB/bench.sh"").

# bench_rounds VMM MARKER FAIL WHAT: a BENCH-FAIL line (and the log's tail) unless out-VMM.log
# has $BENCH_REPEATS lines with MARKER and none with FAIL (an empty FAIL checks nothing).
bench_rounds() {
    n=$(grep -c "$2" "out-$1.log")
    [ "$n" = "$BENCH_REPEATS" ] && { [ -z "$3" ] || ! grep -q "$3" "out-$1.log"; } ||
        { echo "BENCH-FAIL $1: $4 $n of $BENCH_REPEATS times"; tail -n 20 "out-$1.log"; }
}

# bench_need_tools: fio + iperf3 for L2 ($L2_TOOLS, from `# needs: benchtools`) and iperf3 in
# L1, or a BENCH-FAIL line and exit 1.
bench_need_tools() {
    [ -n "${L2_TOOLS:-}" ] && [ -f "$L2_TOOLS" ] ||
        { echo "BENCH-FAIL no L2 bench tools (\$L2_TOOLS): the scenario needs '# needs: benchtools'"; exit 1; }
    command -v iperf3 >/dev/null || { echo "BENCH-FAIL no iperf3 in L1"; exit 1; }
}

# bench_initrd DIR OUT: like l2_initrd (lib/l2.sh), with the bench tools between the guest's
# initrd and DIR's files: $L2_INITRD (padded to 512), $L2_TOOLS (uncompressed, padded), DIR.
bench_initrd() {
    (cd "$1" && ls | cpio -o -H newc 2>/dev/null | gzip) > "$2.script.cpio"
    cat "$L2_INITRD" "$L2_TOOLS" "$2.script.cpio" > "$2"
}

# bench_wait PID SECS CONFIG: waits for PID to exit, at most SECS seconds; then kills it and
# says so (BENCH-FAIL CONFIG: ...).
bench_wait() {
    w=0
    while kill -0 "$1" 2>/dev/null; do
        if [ "$w" -ge "$2" ]; then
            kill -KILL "$1" 2>/dev/null; echo "BENCH-FAIL $3: the VMM was still running after $2 s: killed"
            break
        fi
        sleep 1; w=$((w + 1))
    done
    wait "$1" 2>/dev/null
}

# bench_wait_for PATTERN FILE PID SECS: true once FILE has PATTERN; false if PID exited or SECS passed.
bench_wait_for() {
    w=0
    until grep -q "$1" "$2" 2>/dev/null; do
        kill -0 "$3" 2>/dev/null && [ "$w" -lt "$4" ] || return 1
        sleep 1; w=$((w + 1))
    done
}

# IPERF_AWK: reads iperf3 --json output; prints `sent=BYTES recv=BYTES secs=S` from its end
# sums (for a client run with -R: sent = what the server sent, recv = what this client, the
# receiver, counted over secs). An "error" key prints `error MESSAGE`.
IPERF_AWK='
/"error":/ { err = $0; sub(/^[^:]*:[[:space:]]*/, "", err); gsub(/[",]/, "", err) }
/"sum_sent":/ { m = "sent" }
/"sum_received":/ { m = "recv" }
m != "" && /"seconds":/ { v = $2; sub(/,.*/, "", v); s[m] = v }
m != "" && /"bytes":/ { v = $2; sub(/,.*/, "", v); b[m] = v; m = "" }
END {
    if (err != "") { print "error " err; exit }
    printf "sent=%s recv=%s secs=%s\n", (b["sent"] == "" ? 0 : b["sent"]),
        (b["recv"] == "" ? 0 : b["recv"]), (s["recv"] == "" ? 0 : s["recv"])
}'

# bench_cpu PID: `name=ms name=ms ...`: CPU time (user + system) used so far by the threads of
# PID, summed per thread name (/proc/PID/task/*/comm, spaces as _), and by the vhost kernel
# threads serving PID (vhost-PID) as `vhost=ms`; then `l1_busy=ms l1_total=ms l1_cpus=N` from
# /proc/stat (busy and total summed over all of L1's CPUs). Two calls around a benchmark give what each thread spent in it.
bench_cpu() {
    (
        pid=$1
        for t in /proc/"$pid"/task/*; do
            n=$(tr ' ' '_' 2>/dev/null < "$t/comm") || continue
            # After the ")" of the comm field: state (field 3) ... utime (14), stime (15).
            set -- $(sed 's/.*) //' "$t/stat" 2>/dev/null)
            [ $# -gt 13 ] && echo "$n $(( (${12} + ${13}) * 10 ))"
        done
        for p in /proc/[0-9]*; do
            [ "$(cat "$p/comm" 2>/dev/null)" = "vhost-$pid" ] || continue
            set -- $(sed 's/.*) //' "$p/stat" 2>/dev/null)
            [ $# -gt 13 ] && echo "vhost $(( (${12} + ${13}) * 10 ))"
        done
    ) | awk '{ s[$1] += $2 } END { for (n in s) printf "%s=%d ", n, s[n] }'
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; b = (t - $5 - $6) * 10; t *= 10 }
         /^cpu[0-9]/ { n++ } END { printf "l1_busy=%d l1_total=%d l1_cpus=%d\n", b, t, n }' /proc/stat
}
