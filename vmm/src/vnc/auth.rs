//! VNC password authentication: the server sends a 16-byte random challenge, the client
//! returns it DES-encrypted (ECB, two blocks) with the password as key, each key byte
//! bit-reversed (a quirk of the original VNC implementation every client follows).

use des::cipher::{BlockEncrypt, KeyInit};
use des::Des;

/// Challenge length.
pub const CHALLENGE_LEN: usize = 16;

/// The DES key for `password`: its first 8 bytes, NUL-padded, each byte bit-reversed.
fn key(password: &[u8]) -> [u8; 8] {
    let mut k = [0u8; 8];
    for (slot, b) in k.iter_mut().zip(password) {
        *slot = b.reverse_bits();
    }
    k
}

/// The response a client holding `password` sends for `challenge`.
pub fn response(password: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> [u8; CHALLENGE_LEN] {
    let cipher = Des::new(&key(password).into());
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        cipher.encrypt_block(block.into());
    }
    out
}

/// Whether `answer` proves knowledge of `password`, compared in constant time.
pub fn verify(password: &[u8], challenge: &[u8; CHALLENGE_LEN], answer: &[u8]) -> bool {
    let expected = response(password, challenge);
    answer.len() == CHALLENGE_LEN
        && expected
            .iter()
            .zip(answer)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A fresh random challenge from the kernel's generator.
pub fn challenge() -> std::io::Result<[u8; CHALLENGE_LEN]> {
    let mut c = [0u8; CHALLENGE_LEN];
    let mut filled = 0;
    while filled < c.len() {
        // SAFETY: writes at most the remaining bytes into our buffer.
        let n = unsafe { libc::getrandom(c[filled..].as_mut_ptr().cast(), c.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // The answer vncdotool (DES from Python's `cryptography`) computes for password
        // "password" and the challenge 0..16.
        let challenge: [u8; 16] = core::array::from_fn(|i| i as u8);
        let r = response(b"password", &challenge);
        let want = [
            0xb8, 0x66, 0x92, 0x41, 0x25, 0xc8, 0xee, 0xbb, 0x9d, 0xeb, 0xc1, 0xdb, 0x61, 0xc5,
            0x38, 0xe2,
        ];
        assert_eq!(r, want);
        assert!(verify(b"password", &challenge, &r));
        assert!(
            verify(b"password-longer-than-8", &challenge, &r),
            "only 8 bytes count"
        );
        assert!(!verify(b"Password", &challenge, &r));
        assert!(!verify(b"password", &challenge, &r[..15]));
        assert_eq!(key(b"\x01\x80"), [0x80, 0x01, 0, 0, 0, 0, 0, 0]);
    }
}
