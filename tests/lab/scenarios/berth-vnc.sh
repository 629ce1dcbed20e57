# description: VNC console: L2's console text and a pattern it draws on /dev/fb0 appear pixel-exact in a VNC screenshot (efifb + fbcon) and keys typed over RFB reach L2's tty1 through the i8042
# timeout: 300
# needs: berth
# expect: VNC-SCREEN-OK
# expect: VNC-PATTERN-OK
# expect: VNC-FB-SAME
# expect: L2-VNC-KEYS vnc42
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
command -v nc >/dev/null || { echo "SKIP: no nc in this lab image"; exit 0; }
set -u
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"

W=1024 H=768 STRIDE=4096
PROW=704  # the pattern's first row: 64 rows at the bottom of the screen

# A known pattern for L2 to put on /dev/fb0: 64 rows of eight 128-pixel colour bars (XRGB8888
# little-endian: B G R X), the lower 32 rows with the bars in reverse order.
px() { printf "$1" > px; for i in 1 2 3 4 5 6 7; do cat px px > px2; mv px2 px; done; cat px; }
bars='\000\000\377\000 \000\377\000\000 \377\000\000\000 \377\377\377\000'
bars="$bars \\000\\377\\377\\000 \\377\\000\\377\\000 \\377\\377\\000\\000 \\100\\200\\300\\000"
: > row1; : > row2
for c in $bars; do px "$c" >> row1; done
for c in $bars; do px "$c" | cat - row2 > row2.new; mv row2.new row2; done
mkdir -p s
: > s/pattern.bin
for i in $(seq 1 32); do cat row1 >> s/pattern.bin; done
for i in $(seq 1 32); do cat row2 >> s/pattern.bin; done

# L2 writes a line to the framebuffer console, draws the pattern, reports a hash of its whole
# framebuffer and waits for a line typed on tty1. vt.global_cursor_default=0 (no blinking
# cursor) and loglevel=1 (no kernel messages on tty0) keep the screen still until the
# screenshot. ttyS0 comes last on the command line so that /dev/console (the markers) stays
# on the serial port.
cat > s/scenario.sh <<L2
echo "berth VNC console text line" > /dev/tty1
dd if=/pattern.bin of=/dev/fb0 bs=$STRIDE seek=$PROW 2>/dev/null || echo L2-FB-WRITE-FAILED
sleep 1
echo "L2-FB md5=\$(head -c $((STRIDE * H)) /dev/fb0 | md5sum | cut -d' ' -f1)"
echo L2-VNC-READY
read -r line < /dev/tty1
echo "L2-VNC-KEYS \$line"
L2
l2_initrd s initrd

"$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --memory 256 --vnc 127.0.0.1:5900 \
    --cmdline "console=tty0 console=ttyS0 quiet loglevel=1 vt.global_cursor_default=0 panic=-1 reboot=k l2.action=script l2.net=off" \
    </dev/null >berth.log 2>&1 &
pid=$!
i=0
while ! grep -q L2-VNC-READY berth.log && [ $i -lt 200 ]; do sleep 1; i=$((i + 1)); done

# A raw RFB 3.3 client through nc: no security, shared; one full Raw update of 1024x768;
# then KeyEvents for "vnc42" and Return.
key() {  # keysym as 4 octal escapes
    printf "\\004\\001\\000\\000$1"; printf "\\004\\000\\000\\000$1"
}
{
    printf 'RFB 003.003\n'; printf '\001'
    printf '\003\000\000\000\000\000\004\000\003\000'
    sleep 2
    key '\000\000\000\166'; key '\000\000\000\156'; key '\000\000\000\143'
    key '\000\000\000\064'; key '\000\000\000\062'; key '\000\000\377\015'
    sleep 10
} | nc 127.0.0.1 5900 > screen.bin

# The screenshot: handshake (12 + 4 + ServerInit), update header (16), then W*H*4 pixel bytes.
size=$(wc -c < screen.bin)
hdr=$((size - W * H * 4))
tail -c +$((hdr + 1)) screen.bin > pixels.bin
lit=$(head -c $((STRIDE * 64)) pixels.bin | tr -d '\000' | wc -c)
echo "VNC-SCREEN size=$size header=$hdr text_area_nonzero=$lit"
# Handshake and header are 61 bytes; the console line in the top 64 rows lights ~2000 bytes.
[ "$hdr" -eq 61 ] && [ "$lit" -gt 1000 ] && echo VNC-SCREEN-OK
# Pixel by pixel: the pattern where L2 drew it (cmp names the first differing byte).
tail -c +$((PROW * STRIDE + 1)) pixels.bin | head -c "$(wc -c < s/pattern.bin)" > got.bin
if cmp got.bin s/pattern.bin; then echo VNC-PATTERN-OK; else echo "VNC-PATTERN-DIFF"; fi
# The whole screen, console text included, is the guest's framebuffer.
got=$(md5sum < pixels.bin | cut -d' ' -f1)
want=$(sed -n 's/.*L2-FB md5=\([0-9a-f]*\).*/\1/p' berth.log)
echo "VNC-FB screenshot=$got guest=$want"
[ -n "$want" ] && [ "$got" = "$want" ] && echo VNC-FB-SAME
wait $pid
echo "BERTH-EXIT rc=$?"
grep -E 'L2-|berth:' berth.log
