# description: the serial console over WebSocket (/serial on the VNC port): a wrong password is refused; with the right one a command sent over the WebSocket runs in L2's shell and its output comes back over the WebSocket (and still on berth's stdout)
# timeout: 300
# needs: berth
# expect: WS-AUTH-REFUSED
# expect: WS-SERIAL-OK
# expect: STDOUT-SERIAL-OK
# expect: BERTH-EXIT rc=0
# reject: Kernel panic
# reject: KVM internal error
[ -x "$BERTH" ] || { echo "SKIP: no berth binary in this lab image"; exit 0; }
command -v nc >/dev/null || { echo "SKIP: no nc in this lab image"; exit 0; }
set -u
cd "$SCRATCH"
. "$LAB_LIB/l2.sh"

mkdir -p s
# L2 waits for one command line on its serial console and runs it.
cat > s/scenario.sh <<'L2'
echo L2-SERIAL-READY
read -r cmd < /dev/ttyS0
eval "$cmd"
L2
l2_initrd s initrd
printf 'lab-pw' > pw

"$BERTH" vm --kernel "$L2_KERNEL" --initrd initrd --memory 256 \
    --vnc 127.0.0.1:5900 --vnc-password-file pw \
    --cmdline "console=ttyS0 quiet loglevel=1 panic=-1 reboot=k l2.action=script l2.net=off" \
    </dev/null >berth.log 2>&1 &
pid=$!
i=0
while ! grep -q L2-SERIAL-READY berth.log && [ $i -lt 200 ]; do sleep 1; i=$((i + 1)); done

upgrade() {
    printf 'GET /serial HTTP/1.1\r\nHost: lab\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
    printf 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'
}
# One client text frame (FIN, opcode 1) with an all-zero mask, so the payload goes as is.
frame() {
    printf "\\201\\$(printf %o $((${#1} + 128)))\\000\\000\\000\\000"
    printf '%s' "$1"
}
# The payloads of the server's frames after the HTTP head (lengths below 64 KiB).
deframe() {
    od -An -v -tu1 "$1" | tr -s ' ' '\n' | grep -v '^$' | awk '
        st == 0 { a = b; b = c; c = d; d = $1; if (a == 13 && b == 10 && c == 13 && d == 10) st = 1; next }
        st == 1 { st = 2; next }
        st == 2 { n = $1 % 128; if (n == 126) { need = 2; len = 0; st = 3 } else { rem = n; st = rem ? 4 : 1 }; next }
        st == 3 { len = len * 256 + $1; if (--need == 0) { rem = len; st = rem ? 4 : 1 }; next }
        st == 4 { printf "%c", $1; if (--rem == 0) st = 1 }'
}

{ upgrade; sleep 1; frame 'not-the-password'; sleep 2; } | nc 127.0.0.1 5900 > bad.bin
deframe bad.bin > bad.txt
grep -q 'authentication failed' bad.txt && echo WS-AUTH-REFUSED

cmd='echo L2-SERIAL-$((6*7))'
{ upgrade; sleep 1; frame 'lab-pw'; sleep 2; frame "$cmd$(printf '\r')"; sleep 8; } \
    | nc 127.0.0.1 5900 > good.bin
deframe good.bin > good.txt
echo "WS-SERIAL received $(wc -c < good.txt) bytes"
# The input echoes as typed; only L2's shell turns $((6*7)) into 42.
grep -aq 'L2-SERIAL-42' good.txt && echo WS-SERIAL-OK
wait $pid
echo "BERTH-EXIT rc=$?"
grep -q 'L2-SERIAL-42' berth.log && echo STDOUT-SERIAL-OK
grep -E 'L2-|berth:' berth.log
