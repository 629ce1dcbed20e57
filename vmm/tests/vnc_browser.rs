//! The VNC console in a real browser: headless Chromium (Debian's `chromium`) opens Debian's
//! noVNC page (`novnc`, vnc_lite.html, served by a tiny file server in this test) pointed at
//! berth's VNC port directly (WebSocket on the same port, no websockify). A wrong password is
//! refused; with the right one, a screenshot of noVNC's canvas (taken by Chromium, decoded by
//! Chromium) holds the tiny KVM guest's whole pattern, pixel for pixel; keys typed into the
//! page reach the guest's keyboard controller. Chromium is driven over the DevTools protocol
//! with tungstenite. scripts/setup installs both packages.

#[path = "fb_guest.rs"]
mod fb_guest;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fb_guest::{guest, pattern, wait_for, CODE, H, W};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::serial::CaptureOutput;
use vmm::framebuffer::{Framebuffer, FramebufferConfig};
use vmm::vnc::{VncConfig, VncServer};
use vmm::{ExitReason, MachineConfig, ResetSource, Vm};

const CHROMIUM: &str = "/usr/bin/chromium";
const NOVNC: &str = "/usr/share/novnc";
const PASSWORD: &str = "br0wser";

/// Serves the files under `root` on a loopback port (noVNC's ES modules need HTTP, not
/// file://, and the right Content-Type).
fn file_server(root: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve_file(root, s));
        }
    });
    port
}

fn serve_file(root: &str, mut s: TcpStream) {
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().unwrap());
    if r.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line.split(' ').nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or("/");
    let file = PathBuf::from(root).join(path.trim_start_matches('/'));
    let body = (!path.contains(".."))
        .then(|| std::fs::read(&file).ok())
        .flatten();
    let Some(body) = body else {
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let ctype = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(&body);
}

/// Headless Chromium with the DevTools protocol on a loopback port; killed on drop.
struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // DevTools keeps the connection open: read the head, then Content-Length bytes.
    let mut r = BufReader::new(s);
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // The flags that work on these machines (no sandbox as root, no network chatter).
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--force-device-scale-factor=1",
                "--window-size=800,600",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        wait_for("Chromium's DevTools port", deadline, || {
            std::fs::read_to_string(&port_file).is_ok_and(|s| s.lines().count() >= 2)
        });
        let port: u16 = std::fs::read_to_string(&port_file)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut url = None;
        wait_for("Chromium's page target", deadline, || {
            let list: Value = serde_json::from_str(&http_get(port, "/json/list")).unwrap();
            url = list.as_array().unwrap().iter().find_map(|t| {
                (t["type"] == "page").then(|| t["webSocketDebuggerUrl"].as_str().unwrap().into())
            });
            url.is_some()
        });
        let url: String = url.unwrap();
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), s).expect("DevTools WebSocket");
        Browser {
            child,
            ws,
            next_id: 1,
            _profile: profile,
        }
    }

    /// One DevTools command; its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let Message::Text(t) = self.ws.read().unwrap() else {
                continue;
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise); its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    fn status(&mut self) -> String {
        self.eval("document.getElementById('status')?.textContent ?? ''")
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn wait_status(&mut self, what: &str, deadline: Instant, f: impl Fn(&str) -> bool) -> String {
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A screenshot of noVNC's canvas (Chromium's own capture of the page, PNG), decoded by
    /// Chromium into XRGB values, with its size.
    fn canvas_screenshot(&mut self) -> (u32, u32, Vec<u32>) {
        let rect = self.eval(
            "(() => { const r = document.querySelector('#screen canvas')\
             .getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()",
        );
        let r: Vec<f64> = serde_json::from_value(rect).unwrap();
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "clip": {"x": r[0], "y": r[1], "width": r[2],
                   "height": r[3], "scale": 1}}),
        );
        let png = shot["data"].as_str().unwrap();
        let decoded = self.eval(&format!(
            "(async () => {{ const img = new Image(); img.src = 'data:image/png;base64,{png}';\
             await img.decode(); const c = document.createElement('canvas');\
             c.width = img.width; c.height = img.height; const x = c.getContext('2d');\
             x.drawImage(img, 0, 0); const d = x.getImageData(0, 0, c.width, c.height).data;\
             const px = []; for (let i = 0; i < d.length; i += 4) \
             px.push((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);\
             return [c.width, c.height, px]; }})()"
        ));
        let (w, h, px): (u32, u32, Vec<u32>) = serde_json::from_value(decoded).unwrap();
        (w, h, px)
    }

    fn key(&mut self, key: &str, code: &str, vk: u32, text: &str) {
        for ty in ["keyDown", "keyUp"] {
            let mut p = json!({"type": ty, "key": key, "code": code,
                               "windowsVirtualKeyCode": vk});
            if ty == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }
}

/// Under vnc_browser_seccomp (this file as a module of that test) the VNC and vCPU threads run
/// under berth's seccomp filters in kill mode.
fn sandboxed() {
    if module_path!().starts_with("vnc_browser_seccomp") {
        sandbox::init(sandbox::Options {
            mode: sandbox::Mode::Kill,
            switch: None,
        })
        .expect("sandbox init");
    }
}

#[test]
fn novnc_in_chromium_shows_the_guest_and_types_into_it() {
    sandboxed();
    assert!(
        Path::new("/dev/kvm").exists(),
        "THIS TEST NEEDS /dev/kvm: run it on a host with KVM"
    );
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(NOVNC).join("vnc_lite.html").exists(),
        "THIS TEST NEEDS Debian's chromium and novnc packages: run scripts/setup"
    );
    let sink = CaptureOutput::default();
    let config = MachineConfig {
        vcpus: 1,
        memory_mib: 64,
        nested: false,
    };
    let mut vm = Vm::new(config, Box::new(sink.clone())).unwrap();
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: W,
            height: H,
        })
        .unwrap(),
    );
    vm.add_framebuffer(fb.clone()).unwrap();
    let mut vnc = VncConfig::new("127.0.0.1:0".parse().unwrap());
    vnc.password = Some(PASSWORD.as_bytes().to_vec());
    let server = VncServer::start(vnc, fb.clone(), Some(vm.keyboard())).unwrap();
    vm.memory()
        .write_slice(&guest(), GuestAddress(CODE))
        .unwrap();
    vm.enter_long_mode(GuestAddress(CODE)).unwrap();
    let control = vm.control();
    let run = std::thread::spawn(move || vm.run().unwrap());
    let deadline = Instant::now() + Duration::from_secs(180);
    wait_for("the guest's pattern", deadline, || {
        sink.bytes().starts_with(b"P")
    });

    let http = file_server(NOVNC);
    let vnc_port = server.local_addr().port();
    let page = |pw: &str| {
        format!(
            "http://127.0.0.1:{http}/vnc_lite.html?host=127.0.0.1&port={vnc_port}&password={pw}"
        )
    };
    let mut b = Browser::launch();
    b.call("Page.enable", json!({}));

    // A wrong password: noVNC reports the failure, nothing connects.
    b.call("Page.navigate", json!({"url": page("wrong")}));
    let s = b.wait_status("the refusal", deadline, |s| {
        s.starts_with("Something went wrong") || s.starts_with("Connected")
    });
    assert!(s.starts_with("Something went wrong"), "{s}");

    // The right one (after the server's back-off for the failure).
    b.call("Page.navigate", json!({"url": page(PASSWORD)}));
    let s = b.wait_status("the connection", deadline, |s| {
        s.starts_with("Connected") || s.starts_with("Something went wrong")
    });
    assert_eq!(s, "Connected to berth");
    let want: Vec<u32> = (0..W * H).map(|i| pattern(i) & 0xff_ffff).collect();
    let mut last = (0, 0, Vec::new());
    let shown = (0..100).any(|_| {
        last = b.canvas_screenshot();
        if last == (W, H, want.clone()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    if !shown {
        let (w, h, px) = &last;
        let bad: Vec<(usize, u32, u32)> = px
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i, *a, *b))
            .collect();
        panic!(
            "screenshot {w}x{h} differs from the guest's pattern in {} pixels \
             (index, got, want): {:x?}",
            bad.len(),
            &bad[..bad.len().min(20)]
        );
    }

    // Keys typed into the page: focus the canvas with a click, then 'a' and Enter (which
    // makes the guest reset).
    let center = b.eval(
        "(() => { const r = document.querySelector('#screen canvas')\
         .getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()",
    );
    for ty in ["mousePressed", "mouseReleased"] {
        b.call(
            "Input.dispatchMouseEvent",
            json!({"type": ty, "x": center[0], "y": center[1], "button": "left",
                   "clickCount": 1}),
        );
    }
    b.key("a", "KeyA", 65, "a");
    wait_for("the 'a' scancodes", deadline, || {
        sink.bytes() == b"P\x1e\x9e"
    });
    b.key("Enter", "Enter", 13, "\r");
    let reason = run.join().unwrap();
    control.request_exit(ExitReason::Stopped("test over".into()));
    assert_eq!(reason, ExitReason::Reset(ResetSource::I8042));
    assert_eq!(
        sink.bytes(),
        b"P\x1e\x9e\x1c\x9c",
        "scancodes the guest read"
    );
}
