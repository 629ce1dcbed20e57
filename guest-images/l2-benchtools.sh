#!/bin/bash
# Builds the benchmark tools for the lab's L2 test guest and for L1 (the network peer): Debian's
# fio and iperf3 with their shared libraries, as an UNCOMPRESSED newc cpio padded to 512 bytes
# that a bench scenario appends to the L2 initrd (cat "$L2_INITRD" "$L2_TOOLS" script.cpio.gz;
# see tests/lab/lib/l2.sh), so the other scenarios' guest stays small.
#
# Debian's fio links the client libraries of Ceph (librados, librbd), GlusterFS, NBD, RDMA and
# PMEM (~80 MiB with their dependencies) for I/O engines the lab never uses. Those libraries are
# replaced by stubs built here: each defines, with the symbol versions fio asks for, the
# functions fio imports from it, and every stub function calls abort(). fio binds them at load
# (it is linked with -z now) and never calls them unless a job names one of those engines.
# libaio, libnuma, zlib, libm and libc are the real ones.
#
# Output (stdout, eval-able):  L2_TOOLS=...
# Cached in $BERTH_CACHE/l2/ and rebuilt only when an input changes.
set -euo pipefail
GI_NAME=l2-benchtools.sh
. "$(dirname "$0")/lib.sh"
need cpio ldd sha256sum gcc nm readelf fio iperf3

FIO=$(command -v fio)
IPERF3=$(command -v iperf3)
# The libraries fio really uses for the lab's jobs (ioengine=libaio); the rest become stubs.
KEEP_RE='^(libc\.so|libm\.so|libz\.so|libaio\.so|libnuma\.so|ld-linux)'

out_dir=$CACHE/l2
out=$out_dir/benchtools.cpio
mkdir -p "$out_dir"
stamp=$(stamp_of "$0" "$GI_DIR/lib.sh" "$FIO" "$IPERF3" \
    "$(dpkg-query -W -f='${Package}=${Version} ' fio iperf3 libiperf0 libaio1 2>/dev/null || true)")
emit() { printf 'L2_TOOLS=%q\n' "$out"; }
if fresh "$out" "$stamp"; then
    log "reusing $out"
    emit; exit 0
fi

log "building $out"
tmp=$(mktemp -d "$out_dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
r=$tmp/root
mkdir -p "$r/usr/bin" "$r/lib/x86_64-linux-gnu"

copy_with_libs "$r" "$IPERF3"
install -D -m 755 "$FIO" "$r$FIO"

# fio's libraries: the kept ones copied (with what they need), the others stubbed.
declare -A verlib=()  # symbol version -> the soname that defines it (from .gnu.version_r)
file=
while read -r line; do
    case "$line" in
        *"File: "*) file=$(sed 's/.*File: \([^ ]*\).*/\1/' <<< "$line") ;;
        *"Name: "*) verlib[$(sed 's/.*Name: \([^ ]*\).*/\1/' <<< "$line")]=$file ;;
    esac
done < <(readelf -V -W "$FIO" | sed -n '/\.gnu\.version_r/,$p')

stubs=()
for so in $(readelf -d "$FIO" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    if [[ $so =~ $KEEP_RE ]]; then
        path=$(ldd "$FIO" | awk -v s="$so" '$1 == s { print $3 }')
        [ -n "$path" ] || die "fio needs $so but ldd does not find it"
        copy_with_libs "$r" "$path"
    else
        stubs+=("$so")
    fi
done
# Defined symbols of the kept libraries: an unversioned import found there is not stubbed.
kept_syms=$tmp/kept.syms
for so in $(find "$r" -name '*.so*' -type f); do nm -D --defined-only "$so" | awk '{ print $3 }'; done \
    | sed 's/@.*//' | sort -u > "$kept_syms"

for so in "${stubs[@]}"; do
    c=$tmp/stub-$so.c map=$tmp/stub-$so.map
    printf '#include <stdlib.h>\n' > "$c"
    : > "$map"
    declare -A nodes=()
    while read -r sym; do
        name=${sym%%@*} ver=${sym#*@}
        if [ "$name" = "$sym" ]; then
            # Unversioned: Ceph's C APIs (rados_*, rbd_*), which fio does not version. The
            # first stub defines them all; the loader takes the first definition it finds.
            grep -qx "$name" "$kept_syms" && continue
            [ "$so" = "${stubs[0]}" ] || continue
        else
            ver=${ver#@}
            [ "${verlib[$ver]:-}" = "$so" ] || continue
            nodes[$ver]+="$name; "
        fi
        printf 'void %s(void) { abort(); }\n' "$name" >> "$c"
    done < <(nm -D --undefined-only "$FIO" | awk '$1 == "U" { print $2 }')
    for v in "${!nodes[@]}"; do printf '%s { global: %s};\n' "$v" "${nodes[$v]}" >> "$map"; done
    unset nodes
    vs=()
    [ -s "$map" ] && vs=(-Wl,--version-script="$map")
    gcc -shared -fPIC -O1 -o "$r/lib/x86_64-linux-gnu/$so" -Wl,-soname,"$so" "${vs[@]}" "$c" \
        || die "building the stub $so failed"
done
log "fio: real ${KEEP_RE//\\/}; stubs for ${stubs[*]}"

# The stubbed fio must load and run a job here before it goes into the image.
LD_LIBRARY_PATH=$r/lib/x86_64-linux-gnu "$r$FIO" --name=selftest --ioengine=sync --rw=write \
    --size=64k --filename="$tmp/selftest" --minimal >/dev/null \
    || die "the stubbed fio does not run (see the output above)"
rm -f "$tmp/selftest"

mkcpio "$r" "$tmp/benchtools.cpio" || die "cpio of $r failed"
size=$(stat -c %s "$tmp/benchtools.cpio")
pad=$(( (512 - size % 512) % 512 ))
[ "$pad" -eq 0 ] || head -c "$pad" /dev/zero >> "$tmp/benchtools.cpio"
publish "$tmp/benchtools.cpio" "$out" "$stamp"
log "built $out ($(du -k "$out" | cut -f1) KiB)"
emit
