# description: VNC console: L2's console text appears on the framebuffer (efifb + fbcon) and keys typed over RFB reach L2's tty1 through the i8042
# timeout: 300
# needs: berth
# expect: VNC-SCREEN-OK
# expect: L2-VNC-KEYS vnc42
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
command -v nc >/dev/null || { echo "SKIP: no nc in this lab image"; exit 0; }
set -u
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"

# L2 writes a line to the framebuffer console and waits for a line typed on it. ttyS0 comes
# last on the command line so that /dev/console (the markers) stays on the serial port.
mkdir -p s
cat > s/scenario.sh <<'L2'
echo "berth VNC console text line" > /dev/tty1
echo L2-VNC-READY
read -r line < /dev/tty1
echo "L2-VNC-KEYS $line"
L2
l2_initrd s initrd

"$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --memory 256 --vnc 127.0.0.1:5900 \
    --cmdline "console=tty0 console=ttyS0 quiet panic=-1 reboot=k l2.action=script l2.net=off" \
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
size=$(wc -c < screen.bin)
lit=$(tr -d '\000' < screen.bin | wc -c)
# 12 + 4 + 29 bytes of handshake, 16 of update header, 1024*768*4 of pixels. A black screen
# has about 30 non-zero bytes (the headers); the one line of text L2 wrote gives ~2000.
echo "VNC-SCREEN size=$size nonzero=$lit"
[ "$size" -eq $((61 + 1024 * 768 * 4)) ] && [ "$lit" -gt 1000 ] && echo VNC-SCREEN-OK
wait $pid
echo "BERTH-EXIT rc=$?"
grep -E 'L2-|berth:' berth.log
