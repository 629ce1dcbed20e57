"""The VNC bench (tests/bench/run --only vnc): what berth's VNC console costs.

A tiny 64-bit guest on the local /dev/kvm draws a full 1024x768 screen into berth's
framebuffer, waits for a byte on COM1, draws a different full screen and halts with interrupts
off (an idle guest: KVM keeps the halted vCPU in the kernel). A minimal RFB 3.8 client here
asks for ZRLE (then Raw), as common viewers do, and measures:

* the bytes of the first full update, and of the update that carries the full-screen change
  (found through KVM's dirty log);
* berth's CPU time (all threads, from /proc/PID/task/*/schedstat) per second of wall time while the screen is idle,
  with that viewer connected (an incremental request outstanding, as viewers keep one) and
  after it left.
"""

import os
import select
import socket
import struct
import subprocess
import threading
import time

FB_BASE = 0xE1000000
W, H = 1024, 768
STEP_A, STEP_B = 0x00010305, 0x00030201
ZRLE, RAW = 16, 0


def _fill(start, step):
    """mov rbx, FB_BASE; mov ecx, W*H; mov eax, start; loop: [rbx] = eax; rbx += 4; eax += step."""
    c = bytes([0x48, 0xBB]) + struct.pack("<Q", FB_BASE)
    c += bytes([0xB9]) + struct.pack("<I", W * H)
    c += bytes([0xB8]) + struct.pack("<I", start)
    # fill: mov [rbx], eax; add rbx, 4; add eax, step; dec ecx; jnz fill (-15)
    c += bytes([0x89, 0x03, 0x48, 0x83, 0xC3, 0x04, 0x05]) + struct.pack("<I", step)
    c += bytes([0xFF, 0xC9, 0x75, 0xF1])
    return c


def guest_code():
    """Screen A, 'A' on COM1, wait for a COM1 byte, screen B, 'B', cli; hlt forever."""
    c = _fill(0, STEP_A)
    c += bytes([0x66, 0xBA, 0xF8, 0x03, 0xB0, ord("A"), 0xEE])  # mov dx, 0x3f8; out 'A'
    # wait: mov dx, 0x3fd; in al, dx; test al, 1; jz wait (-9); mov dx, 0x3f8; in al, dx
    c += bytes([0x66, 0xBA, 0xFD, 0x03, 0xEC, 0xA8, 0x01, 0x74, 0xF7])
    c += bytes([0x66, 0xBA, 0xF8, 0x03, 0xEC])
    c += _fill(0x00804020, STEP_B)
    c += bytes([0x66, 0xBA, 0xF8, 0x03, 0xB0, ord("B"), 0xEE])  # out 'B'
    c += bytes([0xFA, 0xF4, 0xEB, 0xFD])  # cli; hlt; jmp hlt
    return c


def _recvn(s, n):
    b = bytearray()
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise RuntimeError(f"the VNC server closed the connection ({len(b)} of {n} bytes read)")
        b += chunk
    return bytes(b)


def _connect(port):
    """RFB 3.8, security None, shared; asks for ZRLE then Raw. Returns the socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    if not _recvn(s, 12).startswith(b"RFB 003."):
        raise RuntimeError("the server did not greet with an RFB version")
    s.sendall(b"RFB 003.008\n")
    types = _recvn(s, _recvn(s, 1)[0])
    if 1 not in types:
        raise RuntimeError(f"security None not offered (types {list(types)}); unset VNC_PASSWORD")
    s.sendall(b"\x01")
    if _recvn(s, 4) != b"\0\0\0\0":
        raise RuntimeError("security handshake failed")
    s.sendall(b"\x01")  # ClientInit: shared
    w, h = struct.unpack(">HH", _recvn(s, 4))
    _recvn(s, 16)
    _recvn(s, struct.unpack(">I", _recvn(s, 4))[0])
    if (w, h) != (W, H):
        raise RuntimeError(f"framebuffer is {w}x{h}, the bench guest draws {W}x{H}")
    s.sendall(struct.pack(">BBHii", 2, 0, 2, ZRLE, RAW))
    return s


def _request(s, incremental):
    s.sendall(struct.pack(">BBHHHH", 3, incremental, 0, 0, W, H))


def _update(s):
    """Reads one FramebufferUpdate; returns (bytes on the wire, pixels covered)."""
    hdr = _recvn(s, 4)
    if hdr[0] != 0:
        raise RuntimeError(f"unexpected server message type {hdr[0]}")
    total, pixels = 4, 0
    for _ in range(struct.unpack(">H", hdr[2:])[0]):
        x, y, w, h, enc = struct.unpack(">HHHHi", _recvn(s, 12))
        total, pixels = total + 12, pixels + w * h
        if enc == RAW:
            _recvn(s, w * h * 4)
            total += w * h * 4
        elif enc == ZRLE:
            n = struct.unpack(">I", _recvn(s, 4))[0]
            _recvn(s, n)
            total += 4 + n
        else:
            raise RuntimeError(f"unexpected encoding {enc}")
    return total, pixels


def _wait_byte(p, want, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if r:
            b = os.read(p.stdout.fileno(), 1)
            if b == want:
                return
            if not b:
                raise RuntimeError(f"berth exited (status {p.wait()}) before the guest printed {want!r}: "
                                   f"{p.stderr.read().decode(errors='replace').strip()[-300:]}")
    raise RuntimeError(f"the guest did not print {want!r} within {timeout}s")


def _cpu_ms(pid):
    """CPU time of all of berth's threads so far, in ms (schedstat: ns, not clock ticks)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return total / 1e6


def _cpu_per_s(pid, windows, secs):
    out = []
    for _ in range(windows):
        c0, t0 = _cpu_ms(pid), time.monotonic()
        time.sleep(secs)
        out.append((_cpu_ms(pid) - c0) / (time.monotonic() - t0))
    return out


def measure(berth, elf, windows, secs):
    """Runs the guest under berth with --vnc and returns the figures (see the module doc)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    p = subprocess.Popen([str(berth), "vm", "--kernel", str(elf), "--memory", "256", "--cmdline", "",
                          "--vnc", f"127.0.0.1:{port}"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        return _measure(p, port, windows, secs)
    except (OSError, socket.timeout) as e:
        raise RuntimeError(f"VNC client: {e}") from e
    finally:
        p.kill()
        p.wait()


def _measure(p, port, windows, secs):
    _wait_byte(p, b"A", 30)
    s = _connect(port)
    _request(s, 0)
    first, px = _update(s)
    if px != W * H:
        raise RuntimeError(f"the first full update covered {px} pixels, not {W * H}")
    _request(s, 1)
    p.stdin.write(b"x")
    p.stdin.flush()
    _wait_byte(p, b"B", 30)
    # The change may arrive in more than one update (the dirty log is read while the guest
    # draws): sum them until the screen is covered or nothing more comes for 3 s.
    change, changed = _update(s)
    s.settimeout(3)
    while changed < W * H:
        _request(s, 1)
        try:
            n, px = _update(s)
        except socket.timeout:
            break
        change, changed = change + n, changed + px
    if changed < W * H // 2:
        raise RuntimeError(f"the full-screen change came as {changed} pixels of {W * H}")
    # From here on, a viewer's loop: answer every update with the next incremental request.
    s.settimeout(None)
    idle_updates = []

    def viewer():
        try:
            while True:
                _request(s, 1)
                idle_updates.append(_update(s)[1])
        except (OSError, RuntimeError):
            pass  # the socket was shut down: the measurement is over

    t = threading.Thread(target=viewer, daemon=True)
    t.start()
    time.sleep(1)
    settled = len(idle_updates)  # what the end of the drawing still dirtied
    with_viewer = _cpu_per_s(p.pid, windows, secs)
    idle = len(idle_updates) - settled
    s.shutdown(socket.SHUT_RDWR)
    t.join()
    s.close()
    time.sleep(1)
    no_viewer = _cpu_per_s(p.pid, windows, secs)
    return {"first_bytes": first, "change_bytes": change, "change_pixels": changed,
            "raw_bytes": 16 + W * H * 4, "cpu_viewer": with_viewer, "cpu_idle": no_viewer,
            "updates_while_idle": idle}
