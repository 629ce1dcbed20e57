# description: VNC pointer: RFB PointerEvents reach L2 as a virtio-input tablet (/dev/input/event*: ABS_X/ABS_Y in framebuffer pixels, BTN_LEFT press and release) and keys typed over RFB still reach tty1
# timeout: 300
# needs: berth
# expect: L2-TABLET name=berth tablet ev=f
# expect: L2-EV 3 0 300
# expect: L2-EV 3 1 200
# expect: L2-EV 1 272 1
# expect: L2-EV 1 272 0
# expect: L2-EV 3 0 1023
# expect: L2-EV 3 1 767
# expect: L2-VNC-KEYS ptr7
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
# reject: L2-NO-TABLET
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
command -v nc >/dev/null || { echo "SKIP: no nc in this lab image"; exit 0; }
set -u
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"

# L2 finds the tablet among its input devices, reads 8 events (24-byte struct input_event on
# x86-64) from its evdev node in the background, says it is ready, prints the events as
# "type code value", then waits for a line typed on tty1 (the i8042 keyboard).
mkdir -p s
cat > s/scenario.sh <<'L2'
dev=
for ev in /sys/class/input/event*; do
    [ "$(cat "$ev/device/name" 2>/dev/null)" = "berth tablet" ] && dev=$ev
done
if [ -z "$dev" ]; then
    echo "L2-NO-TABLET $(cat /sys/class/input/event*/device/name 2>/dev/null | tr '\n' ,)"
    exit 1
fi
echo "L2-TABLET name=$(cat "$dev/device/name") ev=$(cat "$dev/device/capabilities/ev") abs=$(cat "$dev/device/capabilities/abs") key=$(cat "$dev/device/capabilities/key" | tr ' ' _)"
head -c $((24 * 8)) "/dev/input/${dev##*/}" > /tmp/ev.bin &
reader=$!
echo L2-PTR-READY
read -r line < /dev/tty1
echo "L2-VNC-KEYS $line"
wait $reader
od -An -v -tu2 -w24 /tmp/ev.bin | while read -r a b c d e f g h type code lo hi; do
    echo "L2-EV $type $code $((lo + 65536 * hi))"
done
L2
l2_initrd s initrd

"$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --memory 256 --vnc 127.0.0.1:5900 \
    --cmdline "console=tty0 console=ttyS0 quiet loglevel=1 panic=-1 reboot=k l2.action=script l2.net=off" \
    </dev/null >berth.log 2>&1 &
pid=$!
i=0
while ! grep -q -e L2-PTR-READY -e L2-NO-TABLET berth.log && [ $i -lt 200 ]; do
    sleep 1; i=$((i + 1))
done

# A raw RFB 3.3 client through nc (no security, shared), then PointerEvents: left button down
# at (300, 200), up there, a move past the bottom-right corner (clamped to 1023, 767); then
# KeyEvents for "ptr7" and Return.
key() {  # keysym as 4 octal escapes
    printf "\\004\\001\\000\\000$1"; printf "\\004\\000\\000\\000$1"
}
{
    printf 'RFB 003.003\n'; printf '\001'
    sleep 2
    printf '\005\001\001\054\000\310'
    printf '\005\000\001\054\000\310'
    printf '\005\000\047\020\047\020'
    key '\000\000\000\160'; key '\000\000\000\164'; key '\000\000\000\162'
    key '\000\000\000\067'; key '\000\000\377\015'
    sleep 5
} | nc 127.0.0.1 5900 > /dev/null

wait $pid
echo "BERTH-EXIT rc=$?"
grep -E 'L2-|berth:' berth.log
