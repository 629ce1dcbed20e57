#!/bin/bash
# Cuts the uncompressed ELF vmlinux out of a bzImage (the payload after the setup code is an
# xz, gzip, lz4 or zstd stream of it), so the lab can test berth's ELF boot path with the same
# kernel. Cached next to the bzImage.
#
#   guest-images/vmlinux.sh BZIMAGE      # prints VMLINUX=<path> (eval-able)
set -euo pipefail
GI_DIR=$(cd "$(dirname "$0")" && pwd)
. "$GI_DIR/lib.sh"

bz=${1:?usage: vmlinux.sh BZIMAGE}
out=$(dirname "$bz")/vmlinux
stamp=$(stamp_of "$0" "$bz")
if ! fresh "$out" "$stamp"; then
    # Find the first compression magic after the setup sectors and decompress that stream.
    read -r fmt off < <(python3 - "$bz" <<'PY'
import sys
d = open(sys.argv[1], "rb").read()
hits = [(d.find(m), name) for name, m in (("xz", b"\xfd7zXZ\x00"), ("gzip", b"\x1f\x8b\x08"),
        ("lz4", b"\x02\x21\x4c\x18"), ("zstd", b"\x28\xb5\x2f\xfd"))]
hits = sorted((o, n) for o, n in hits if o > 0)
if not hits:
    sys.exit("no compressed kernel payload found")
print(hits[0][1], hits[0][0])
PY
    )
    case $fmt in
        xz) dec=(xz -dc --single-stream) ;;
        gzip) dec=(gzip -dc) ;;
        lz4) dec=(lz4 -dc) ;;
        zstd) dec=(zstd -dc) ;;
    esac
    tmp=$(mktemp "$out.XXXXXX")
    # gzip/xz complain about the bytes that follow the stream; the ELF check below is the test.
    tail -c +$((off + 1)) "$bz" | "${dec[@]}" > "$tmp" 2>/dev/null || true
    [ "$(head -c 4 "$tmp" | od -An -c | tr -d ' ')" = '177ELF' ] \
        || { rm -f "$tmp"; die "no ELF vmlinux in the $fmt payload of $bz"; }
    publish "$tmp" "$out" "$stamp"
    log "extracted $out ($(( $(stat -c %s "$out") / 1048576 )) MiB) from $bz ($fmt)"
fi
printf 'VMLINUX=%q\n' "$out"
