#!/usr/bin/env bash
# The zero-copy table of docs/block.md: blockbench --virtio (each request as a descriptor chain
# through the virtio-blk request engine into a guest memory) with two blockbench binaries (the
# engine before and after a change), next to qemu-img bench -i threads -d 1, on raw and qcow2,
# 1 MiB sequential and 4 KiB strided rows, one request at a time; medians of REPEATS.
# Usage: BEFORE=path AFTER=path vmm/examples/blockbench-virtio.sh
# Env: SIZE_MIB (256), N4K (100000), N1M (SIZE_MIB), REPEATS (5), SEG (data descriptor size, 65536); the
# images (2 x SIZE_MIB) go to $TMPDIR (default /tmp).
# Needs qemu-img and qemu-io (qemu-utils).
set -euo pipefail
: "${BEFORE:?a blockbench binary of the old engine}" "${AFTER:?a blockbench binary of the new}"
SIZE_MIB=${SIZE_MIB:-256}
REPEATS=${REPEATS:-5}
N4K=${N4K:-100000}
N1M=${N1M:-$SIZE_MIB}  # 1 MiB requests per run (past the end they start again at 0)
SEG=${SEG:-65536}
STEP=$((4096 * 7919))
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
q() { qemu-img bench -t writeback -i threads -d 1 "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p'; }
qemu-img create -q -f raw $w/d.raw ${SIZE_MIB}M; dd if=/dev/zero of=$w/d.raw bs=1M count=$SIZE_MIB conv=notrunc status=none
# A fully allocated qcow2 (no base: the machine's disk is small).
qemu-img create -q -f qcow2 $w/o.qcow2 ${SIZE_MIB}M
qemu-io -f qcow2 -c "write -P 0x3c 0 ${SIZE_MIB}M" $w/o.qcow2 >/dev/null
cat $w/* > /dev/null
row() { # name fmt image kind size count step
  local name=$1 fmt=$2 img=$3 kind=$4 size=$5 count=$6 step=$7
  local wflag=""; [ $kind = write ] && wflag=-w
  declare -A r
  for ((i=0;i<REPEATS;i++)); do
    for k in q before after; do
      [ $kind = write ] && sync
      case $k in
        q) s=$(q -f $fmt $wflag -c $count -s $size -S $step $img) ;;
        before) s=$("$BEFORE" $img $kind --size $size --count $count --step $step --virtio $SEG | awk '{print $2}') ;;
        after) s=$("$AFTER" $img $kind --size $size --count $count --step $step --virtio $SEG | awk '{print $2}') ;;
      esac
      r[$k]+="$s "
    done
  done
  out="| $name"
  for k in q before after; do
    m=$(echo ${r[$k]} | tr ' ' '\n' | median)
    out+=" | $(awk -v c=$count -v s=$size -v m=$m 'BEGIN{ if (s>=1048576) printf "%.0f MiB/s", c*s/1048576/m; else printf "%.0f IOPS", c/m }')"
    eval "m_$k=$m"
  done
  out+=" | $(awk -v a=$m_before -v b=$m_after 'BEGIN{printf "%.2f", a/b}') |"
  echo "$out"
}
echo "| workload | qemu-img threads -d 1 | berth before | berth after | after / before |"
echo "|---|---|---|---|---|"
row "raw 1 MiB sequential read" raw $w/d.raw read 1048576 $N1M 1048576
row "raw 1 MiB sequential write" raw $w/d.raw write 1048576 $N1M 1048576
row "qcow2 1 MiB sequential read" qcow2 $w/o.qcow2 read 1048576 $N1M 1048576
row "qcow2 1 MiB sequential write (allocated)" qcow2 $w/o.qcow2 write 1048576 $N1M 1048576
row "raw 4 KiB strided read" raw $w/d.raw read 4096 $N4K $STEP
row "raw 4 KiB strided write" raw $w/d.raw write 4096 $N4K $STEP
row "qcow2 4 KiB strided read" qcow2 $w/o.qcow2 read 4096 $N4K $STEP
row "qcow2 4 KiB strided write" qcow2 $w/o.qcow2 write 4096 $N4K $STEP
