#!/usr/bin/env bash
# The concurrency table of docs/block.md: berth's block layer (blockbench, 1 and 8 threads)
# against qemu-img bench (-d 1 and -d 32, -i threads and -i io_uring), medians of REPEATS.
# Env: BENCH (a blockbench binary; default: build it), SIZE_MIB (256), N4K (100000),
# REPEATS (3). Needs qemu-img and qemu-io (qemu-utils).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${BENCH:-}" ]; then
    cargo build --quiet --release -p vmm --example blockbench
    BENCH=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/blockbench
fi
SIZE_MIB=${SIZE_MIB:-256}
REPEATS=${REPEATS:-3}
N4K=${N4K:-100000}
STEP=$((4096 * 7919))
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
q() { qemu-img bench -t writeback "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p'; }
b() { "$BENCH" "$@" | awk '{print $2}'; }
# images: raw preallocated, qcow2 base + overlay fully allocated
qemu-img create -q -f raw $w/d.raw ${SIZE_MIB}M; dd if=/dev/zero of=$w/d.raw bs=1M count=$SIZE_MIB conv=notrunc status=none
qemu-img create -q -f qcow2 $w/base.qcow2 ${SIZE_MIB}M
qemu-io -f qcow2 -c "write -P 0x5a 0 ${SIZE_MIB}M" $w/base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b $w/base.qcow2 -F qcow2 $w/o.qcow2
qemu-io -f qcow2 -c "write -P 0x3c 0 ${SIZE_MIB}M" $w/o.qcow2 >/dev/null
fresh() { rm -f $w/f.qcow2; qemu-img create -q -f qcow2 -b $w/base.qcow2 -F qcow2 $w/f.qcow2; }
cat $w/* > /dev/null
row() { # name fmt image kind(read|write) size count step fresh?
  local name=$1 fmt=$2 img=$3 kind=$4 size=$5 count=$6 step=$7 fr=$8
  local wflag=""; [ $kind = write ] && wflag=-w
  declare -A r
  for ((i=0;i<REPEATS;i++)); do
    for cfg in "q1t:-i threads -d 1" "q32t:-i threads -d 32" "q32u:-i io_uring -d 32" "b1:1" "b8:8"; do
      k=${cfg%%:*}; a=${cfg#*:}
      [ $fr = 1 ] && { fresh; img=$w/f.qcow2; }
      # Writes start with no dirty pages left from the previous run.
      [ $kind = write ] && sync
      if [[ $k == q* ]]; then s=$(q -f $fmt $wflag $a -c $count -s $size -S $step $img)
      else s=$(b $img $kind --size $size --count $count --step $step --threads $a); fi
      r[$k]+="$s "
    done
  done
  out="$name"
  for k in q1t q32t q32u b1 b8; do
    m=$(echo ${r[$k]} | tr ' ' '\n' | median)
    out+=" | $(awk -v c=$count -v s=$size -v m=$m 'BEGIN{ if (s>=1048576) printf "%.0f MiB/s", c*s/1048576/m; else printf "%.0f IOPS", c/m }')"
  done
  echo "$out"
}
echo "workload | qemu-img threads d1 | qemu-img threads d32 | qemu-img io_uring d32 | berth 1 thread | berth 8 threads"
row "raw 4K strided read" raw $w/d.raw read 4096 $N4K $STEP 0
row "raw 4K strided write" raw $w/d.raw write 4096 $N4K $STEP 0
row "qcow2 4K strided read (allocated overlay)" qcow2 $w/o.qcow2 read 4096 $N4K $STEP 0
row "qcow2 4K strided write (allocated overlay)" qcow2 $w/o.qcow2 write 4096 $N4K $STEP 0
row "raw 1M sequential write" raw $w/d.raw write 1048576 $SIZE_MIB 1048576 0
row "raw 1M sequential read" raw $w/d.raw read 1048576 $SIZE_MIB 1048576 0
row "qcow2 1M sequential write (fresh overlay)" qcow2 x write 1048576 $SIZE_MIB 1048576 1
row "qcow2 1M sequential read (allocated overlay)" qcow2 $w/o.qcow2 read 1048576 $SIZE_MIB 1048576 0
