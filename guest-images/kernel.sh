#!/bin/bash
# Fetches a Debian generic kernel (linux-image-<abi>-amd64), unpacked and depmod'ed, into the
# cache. KERNEL_SERIES picks the series: 6.1 (default: Debian 12's own, the L2 test guest's
# kernel) or 6.12 (bookworm-backports: the lab's L1, see l1-image.sh).
#
# Output (stdout, eval-able):  KVER=...  VMLINUZ=...  MODDIR=...  KCONFIG=...
# Usage:  eval "$(guest-images/kernel.sh)"
#
# The ABI is resolved with apt-cache from the newest candidate of linux-image-amd64 in that
# series (6.1: bookworm / bookworm-security; 6.12: bookworm-backports). Pin it by hand with
# KERNEL_PKG=linux-image-6.1.0-56-amd64 KERNEL_VERSION=6.1.192-2.
# Offline: if apt cannot resolve anything, the newest kernel of the series already in the cache
# is reused.
set -euo pipefail
GI_NAME=kernel.sh
. "$(dirname "$0")/lib.sh"
need apt-cache apt-get dpkg dpkg-deb depmod

KDIR=$CACHE/kernel
mkdir -p "$KDIR"
SERIES=${KERNEL_SERIES:-6.1}
case $SERIES in 6.1 | 6.12) ;; *) die "KERNEL_SERIES=$SERIES: use 6.1 or 6.12" ;; esac

emit() {  # emit DIR: print the result variables for the unpacked kernel in DIR
    local d=$1 kver
    kver=$(cat "$d/kver")
    printf 'KVER=%q\nVMLINUZ=%q\nMODDIR=%q\nKCONFIG=%q\n' \
        "$kver" "$d/vmlinuz" "$d/lib/modules/$kver" "$d/config"
}

resolve() {  # prints "<package> <version>" of the series' generic kernel apt would install
    local meta_ver pkg ver
    # madison lists newest first; take the newest of the series ("6.1." is not a prefix of
    # "6.12.").
    meta_ver=$(apt-cache madison linux-image-amd64 2>/dev/null \
        | awk -F'|' -v p="$SERIES." '{gsub(/ /, "", $2)} index($2, p) == 1 {print $2; exit}')
    [ -n "$meta_ver" ] || return 1
    pkg=$(apt-cache show "linux-image-amd64=$meta_ver" 2>/dev/null \
        | sed -n 's/^Depends: *\(linux-image-[0-9][^ ,]*-amd64\).*/\1/p' | head -n1)
    [ -n "$pkg" ] || return 1
    ver=$(apt-cache madison "$pkg" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2; exit}')
    [ -n "$ver" ] || return 1
    printf '%s %s\n' "$pkg" "$ver"
}

if [ -n "${KERNEL_PKG:-}" ] && [ -n "${KERNEL_VERSION:-}" ]; then
    pkg=$KERNEL_PKG ver=$KERNEL_VERSION
elif read -r pkg ver < <(resolve); then
    :
elif [ "$(id -u)" = 0 ] && apt-get update -q >/dev/null 2>&1 && read -r pkg ver < <(resolve); then
    # The package lists were gone (mmdebstrap in root mode empties the host's): fetched again.
    log "apt-cache had no package lists; ran apt-get update"
else
    newest=$(ls -1dt "$KDIR"/linux-image-"$SERIES".*/ 2>/dev/null | head -n1 || true)
    if [ -n "$newest" ] && [ -f "$newest/kver" ]; then
        log "apt-cache could not resolve linux-image-amd64 (no package lists?); reusing cached ${newest%/}"
        emit "${newest%/}"
        exit 0
    fi
    die "cannot resolve a $SERIES linux-image-amd64 with apt-cache; run scripts/setup (apt-get update)"
fi

out=$KDIR/${pkg}_${ver}
if fresh "$out" "$pkg=$ver"; then
    log "reusing $pkg $ver"
    emit "$out"
    exit 0
fi

log "downloading $pkg=$ver"
tmp=$(mktemp -d "$KDIR/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q=2 "$pkg=$ver" >/dev/null 2>"$tmp/apt.err") \
    || { cat "$tmp/apt.err" >&2; die "apt-get download $pkg=$ver failed"; }
deb=$(ls "$tmp"/*.deb)
mkdir "$tmp/x"
dpkg-deb -x "$deb" "$tmp/x" || die "dpkg-deb -x $deb failed"
kver=$(ls "$tmp/x/lib/modules" | head -n1)
[ -n "$kver" ] && [ -f "$tmp/x/boot/vmlinuz-$kver" ] || die "$deb has no /boot/vmlinuz-<kver> + /lib/modules/<kver>"
depmod -b "$tmp/x" "$kver" || die "depmod -b $tmp/x $kver failed"

mkdir "$tmp/out"
mv "$tmp/x/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
mv "$tmp/x/boot/config-$kver" "$tmp/out/config"
mkdir -p "$tmp/out/lib/modules"
mv "$tmp/x/lib/modules/$kver" "$tmp/out/lib/modules/$kver"
printf '%s\n' "$kver" > "$tmp/out/kver"
printf '%s %s\n' "$pkg" "$ver" > "$tmp/out/package"
publish "$tmp/out" "$out" "$pkg=$ver"
log "unpacked $pkg $ver (kernel $kver)"
emit "$out"
