//! The RFB wire protocol, server side: the handshake (versions 3.3, 3.7 and 3.8; security
//! None or VNC authentication) and parsing of client messages with strict limits.

use std::io::{self, Read, Write};

use super::auth;
use super::encode::PixelFormat;

/// Security type: none.
pub const SECURITY_NONE: u8 = 1;
/// Security type: VNC authentication.
pub const SECURITY_VNC: u8 = 2;
/// Most encodings a client may list in SetEncodings.
pub const MAX_ENCODINGS: u16 = 1024;
/// Longest ClientCutText accepted (it is read and thrown away).
pub const MAX_CUT_TEXT: u32 = 1 << 20;

/// The protocol version agreed with a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// RFB 3.3: the server picks the security type.
    V3_3,
    /// RFB 3.7: the client picks; no SecurityResult after None.
    V3_7,
    /// RFB 3.8: SecurityResult always, with a reason on failure.
    V3_8,
}

/// A message from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// SetPixelFormat.
    SetPixelFormat(PixelFormat),
    /// SetEncodings, in the client's order of preference.
    SetEncodings(Vec<i32>),
    /// FramebufferUpdateRequest.
    UpdateRequest {
        /// Only changes are wanted.
        incremental: bool,
        /// Left.
        x: u16,
        /// Top.
        y: u16,
        /// Width.
        w: u16,
        /// Height.
        h: u16,
    },
    /// KeyEvent.
    Key {
        /// Pressed (true) or released.
        down: bool,
        /// X11 keysym.
        keysym: u32,
    },
    /// PointerEvent: where the pointer is (framebuffer pixels) and which buttons are down
    /// (bit 0 left, 1 middle, 2 right, 3/4 wheel up/down).
    Pointer {
        /// Button mask.
        mask: u8,
        /// Column.
        x: u16,
        /// Row.
        y: u16,
    },
    /// ClientCutText (ignored).
    CutText,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// What the server tells a client in ServerInit.
pub struct ServerInit<'a> {
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
    /// Desktop name.
    pub name: &'a str,
}

/// Runs the server side of the handshake up to and including ServerInit. With a
/// `password`, the client must pass VNC authentication; a wrong answer ends in an error of
/// kind `PermissionDenied`.
pub fn handshake(
    r: &mut impl Read,
    w: &mut impl Write,
    password: Option<&[u8]>,
    init: &ServerInit<'_>,
) -> io::Result<Version> {
    handshake_gated(r, w, password, init, &mut NoGate)
}

/// Hooks around the password check, for the server's back-off after failed passwords.
pub trait AuthGate {
    /// Called when the client's answer has arrived, before it is checked: waits out a
    /// back-off; an error ends the handshake unanswered.
    fn wait_turn(&mut self) -> io::Result<()>;
    /// The outcome, recorded before the client hears it (so its next try sees it).
    fn result(&mut self, ok: bool);
}

/// No back-off.
struct NoGate;

impl AuthGate for NoGate {
    fn wait_turn(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn result(&mut self, _ok: bool) {}
}

/// [`handshake`] with `gate` around the password check.
pub fn handshake_gated(
    r: &mut impl Read,
    w: &mut impl Write,
    password: Option<&[u8]>,
    init: &ServerInit<'_>,
    gate: &mut dyn AuthGate,
) -> io::Result<Version> {
    w.write_all(b"RFB 003.008\n")?;
    w.flush()?;
    let v: [u8; 12] = read_array(r)?;
    let version = parse_version(&v).ok_or_else(|| invalid("not an RFB client"))?;
    let security = if password.is_some() {
        SECURITY_VNC
    } else {
        SECURITY_NONE
    };
    if version == Version::V3_3 {
        w.write_all(&u32::from(security).to_be_bytes())?;
    } else {
        w.write_all(&[1, security])?;
        w.flush()?;
        let [chosen] = read_array(r)?;
        if chosen != security {
            if version == Version::V3_8 {
                fail(w, "security type not offered")?;
            }
            return Err(invalid("client chose a security type that was not offered"));
        }
    }
    if let Some(password) = password {
        let challenge = auth::challenge()?;
        w.write_all(&challenge)?;
        w.flush()?;
        let answer: [u8; auth::CHALLENGE_LEN] = read_array(r)?;
        gate.wait_turn()?;
        let ok = auth::verify(password, &challenge, &answer);
        gate.result(ok);
        if !ok {
            // 3.3 and 3.7 clients get no reason string.
            if version == Version::V3_8 {
                fail(w, "authentication failed")?;
            } else {
                w.write_all(&1u32.to_be_bytes())?;
                w.flush()?;
            }
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "wrong VNC password",
            ));
        }
        w.write_all(&0u32.to_be_bytes())?;
    } else if version == Version::V3_8 {
        w.write_all(&0u32.to_be_bytes())?;
    }
    w.flush()?;
    let [_shared] = read_array(r)?; // every client shares the console
    let mut si = Vec::with_capacity(24 + init.name.len());
    si.extend_from_slice(&init.width.to_be_bytes());
    si.extend_from_slice(&init.height.to_be_bytes());
    si.extend_from_slice(&PixelFormat::XRGB8888.to_bytes());
    si.extend_from_slice(&(init.name.len() as u32).to_be_bytes());
    si.extend_from_slice(init.name.as_bytes());
    w.write_all(&si)?;
    w.flush()?;
    Ok(version)
}

/// SecurityResult "failed" with a reason (RFB 3.8).
fn fail(w: &mut impl Write, reason: &str) -> io::Result<()> {
    w.write_all(&1u32.to_be_bytes())?;
    w.write_all(&(reason.len() as u32).to_be_bytes())?;
    w.write_all(reason.as_bytes())?;
    w.flush()
}

/// Refuses a client before security negotiation (e.g. too many connections): after the
/// version exchange, zero security types and a reason (3.3: type 0 and a reason).
pub fn refuse(r: &mut impl Read, w: &mut impl Write, reason: &str) -> io::Result<()> {
    w.write_all(b"RFB 003.008\n")?;
    w.flush()?;
    let v: [u8; 12] = read_array(r)?;
    match parse_version(&v) {
        Some(Version::V3_3) => w.write_all(&0u32.to_be_bytes())?,
        Some(_) => w.write_all(&[0])?,
        None => return Ok(()),
    }
    w.write_all(&(reason.len() as u32).to_be_bytes())?;
    w.write_all(reason.as_bytes())?;
    w.flush()
}

/// Parses "RFB xxx.yyy\n". Unknown 3.x minors are treated as 3.3, newer ones as 3.8, as the
/// specification asks.
pub fn parse_version(v: &[u8; 12]) -> Option<Version> {
    let digits = |s: &[u8]| -> Option<u32> {
        s.iter().all(u8::is_ascii_digit).then_some(())?;
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if &v[..4] != b"RFB " || v[7] != b'.' || v[11] != b'\n' {
        return None;
    }
    let (major, minor) = (digits(&v[4..7])?, digits(&v[8..11])?);
    match (major, minor) {
        (3, 7) => Some(Version::V3_7),
        (3, m) if m >= 8 => Some(Version::V3_8),
        (3, _) => Some(Version::V3_3),
        (m, _) if m > 3 => Some(Version::V3_8),
        _ => None,
    }
}

/// Reads one client message. Errors: I/O, or InvalidData for a message the server does not
/// know or accept (the connection is then closed).
pub fn read_message(r: &mut impl Read) -> io::Result<ClientMessage> {
    let [kind] = read_array(r)?;
    Ok(match kind {
        0 => {
            let b: [u8; 19] = read_array(r)?;
            let f = PixelFormat::from_bytes(b[3..].try_into().expect("16 bytes"))
                .ok_or_else(|| invalid("unsupported pixel format"))?;
            ClientMessage::SetPixelFormat(f)
        }
        2 => {
            let b: [u8; 3] = read_array(r)?;
            let n = u16::from_be_bytes([b[1], b[2]]);
            if n > MAX_ENCODINGS {
                return Err(invalid(format!("{n} encodings")));
            }
            let mut encodings = Vec::with_capacity(n.into());
            for _ in 0..n {
                encodings.push(i32::from_be_bytes(read_array(r)?));
            }
            ClientMessage::SetEncodings(encodings)
        }
        3 => {
            let b: [u8; 9] = read_array(r)?;
            let u = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
            ClientMessage::UpdateRequest {
                incremental: b[0] != 0,
                x: u(1),
                y: u(3),
                w: u(5),
                h: u(7),
            }
        }
        4 => {
            let b: [u8; 7] = read_array(r)?;
            ClientMessage::Key {
                down: b[0] != 0,
                keysym: u32::from_be_bytes([b[3], b[4], b[5], b[6]]),
            }
        }
        5 => {
            let b: [u8; 5] = read_array(r)?;
            ClientMessage::Pointer {
                mask: b[0],
                x: u16::from_be_bytes([b[1], b[2]]),
                y: u16::from_be_bytes([b[3], b[4]]),
            }
        }
        6 => {
            let b: [u8; 7] = read_array(r)?;
            let len = u32::from_be_bytes([b[3], b[4], b[5], b[6]]);
            if len > MAX_CUT_TEXT {
                return Err(invalid(format!("cut text of {len} bytes")));
            }
            let skipped = io::copy(&mut r.take(len.into()), &mut io::sink())?;
            if skipped != u64::from(len) {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            ClientMessage::CutText
        }
        k => return Err(invalid(format!("unknown message type {k}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = |s: &[u8; 12]| parse_version(s);
        assert_eq!(v(b"RFB 003.003\n"), Some(Version::V3_3));
        assert_eq!(v(b"RFB 003.005\n"), Some(Version::V3_3));
        assert_eq!(v(b"RFB 003.007\n"), Some(Version::V3_7));
        assert_eq!(v(b"RFB 003.008\n"), Some(Version::V3_8));
        assert_eq!(v(b"RFB 003.889\n"), Some(Version::V3_8));
        assert_eq!(v(b"RFB 00x.008\n"), None);
        assert_eq!(v(b"GET / HTTP/1"), None);
    }

    #[test]
    fn messages_and_limits() {
        let mut m: &[u8] = &[4, 1, 0, 0, 0, 0, 0xff, 0x0d];
        assert_eq!(
            read_message(&mut m).unwrap(),
            ClientMessage::Key {
                down: true,
                keysym: 0xff0d
            }
        );
        let mut ptr: &[u8] = &[5, 0x05, 0x01, 0x02, 0x00, 0x30];
        assert_eq!(
            read_message(&mut ptr).unwrap(),
            ClientMessage::Pointer {
                mask: 5,
                x: 0x102,
                y: 0x30
            }
        );
        let mut big: &[u8] = &[2, 0, 0xff, 0xff];
        assert_eq!(
            read_message(&mut big).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut cut: &[u8] = &[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(read_message(&mut cut).is_err());
        let mut short_cut: &[u8] = &[6, 0, 0, 0, 0, 0, 0, 5, b'a'];
        assert!(read_message(&mut short_cut).is_err());
        let mut unknown: &[u8] = &[200];
        assert!(read_message(&mut unknown).is_err());
    }
}
