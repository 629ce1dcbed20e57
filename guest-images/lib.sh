# Shared helpers for the guest-images scripts. Source it; do not run it.
# shellcheck shell=bash

GI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$GI_DIR/.." && pwd)
CACHE=${BERTH_CACHE:-$REPO_DIR/.cache}
PATH=$PATH:/usr/sbin:/sbin
export PATH

# log MSG: one progress line on stderr (stdout is reserved for machine-readable output).
log() { printf '%s: %s\n' "${GI_NAME:-guest-images}" "$*" >&2; }

# die MSG: report what failed and exit non-zero.
die() { printf '%s: ERROR: %s\n' "${GI_NAME:-guest-images}" "$*" >&2; exit 1; }

# need CMD...: fail early, naming the package to install, when a tool is missing.
need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "'$c' not found; run scripts/setup (as root) first"
    done
}

# stamp_of FILE_OR_STRING...: a sha256 over the given strings and the contents of any that are
# files. Used as the "inputs unchanged" key of a cached output.
stamp_of() {
    local a
    for a in "$@"; do
        if [ -f "$a" ]; then printf 'file\n'; sha256sum < "$a"; else printf 'str %s\n' "$a"; fi
    done | sha256sum | cut -d' ' -f1
}

# fresh OUT STAMP: true when OUT exists and OUT.stamp holds STAMP (reuse the cached output).
fresh() { [ -e "$1" ] && [ -f "$1.stamp" ] && [ "$(cat "$1.stamp")" = "$2" ]; }

# publish TMP OUT STAMP: atomically move a finished build into place and record its stamp.
publish() {
    local tmp=$1 out=$2 stamp=$3
    rm -f "$out.stamp"
    if [ -d "$tmp" ] && [ -d "$out" ]; then
        # rename(2) cannot replace a non-empty directory: swap it aside first.
        mv "$out" "$out.old.$$" && mv "$tmp" "$out" && rm -rf "$out.old.$$"
    else
        mv -f "$tmp" "$out"
    fi
    printf '%s\n' "$stamp" > "$out.stamp.tmp.$$" && mv -f "$out.stamp.tmp.$$" "$out.stamp"
}

# copy_with_libs DEST BIN...: copy binaries into the tree DEST at the same paths, with every
# shared library ldd reports (and the dynamic loader).
copy_with_libs() {
    local dest=$1 bin lib; shift
    for bin in "$@"; do
        [ -e "$bin" ] || die "copy_with_libs: $bin not found"
        install -D -m 755 "$bin" "$dest$bin"
        ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
            [ -e "$dest$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$dest$lib"
        done
    done
}

# mkcpio DIR OUT [gzip]: pack DIR as a newc cpio owned by root (optionally gzip'ed), sorted so
# identical trees give identical archives.
mkcpio() {
    local dir=$1 out=$2 z=${3:-}
    if [ "$z" = gzip ]; then
        (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6) > "$out"
    else
        (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$out"
    fi
}
