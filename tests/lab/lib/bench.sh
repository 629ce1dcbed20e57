# Sourced by the bench-* scenarios (". "$LAB_LIB/bench.sh"").

# bench_rounds VMM MARKER FAIL WHAT: a BENCH-FAIL line (and the log's tail) unless out-VMM.log
# has $BENCH_REPEATS lines with MARKER and none with FAIL (an empty FAIL checks nothing).
bench_rounds() {
    n=$(grep -c "$2" "out-$1.log")
    [ "$n" = "$BENCH_REPEATS" ] && { [ -z "$3" ] || ! grep -q "$3" "out-$1.log"; } ||
        { echo "BENCH-FAIL $1: $4 $n of $BENCH_REPEATS times"; tail -n 20 "out-$1.log"; }
}
