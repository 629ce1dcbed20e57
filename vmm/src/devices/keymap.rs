//! The keys of a US PC keyboard: their scancodes in sets 1 and 2, and the X11 keysyms (as RFB
//! sends them) that map to them.

/// One physical key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// Scancode set 1 make code (without the 0xE0 prefix).
    pub set1: u8,
    /// Scancode set 2 make code (without the 0xE0 prefix).
    pub set2: u8,
    /// Whether the key sends an 0xE0 prefix.
    pub extended: bool,
}

impl Key {
    const fn new(set1: u8, set2: u8) -> Self {
        Key {
            set1,
            set2,
            extended: false,
        }
    }

    const fn ext(set1: u8, set2: u8) -> Self {
        Key {
            set1,
            set2,
            extended: true,
        }
    }

    /// The set 2 bytes a keyboard sends when the key goes down (`down`) or up.
    pub fn set2_bytes(&self, down: bool) -> Vec<u8> {
        let mut v = Vec::with_capacity(3);
        if self.extended {
            v.push(0xe0);
        }
        if !down {
            v.push(0xf0);
        }
        v.push(self.set2);
        v
    }
}

/// Left Shift.
pub const LEFT_SHIFT: Key = Key::new(0x2a, 0x12);

/// Printable ASCII keys: (unshifted char, shifted char, key).
const PRINTABLE: &[(u8, u8, Key)] = &[
    (b'1', b'!', Key::new(0x02, 0x16)),
    (b'2', b'@', Key::new(0x03, 0x1e)),
    (b'3', b'#', Key::new(0x04, 0x26)),
    (b'4', b'$', Key::new(0x05, 0x25)),
    (b'5', b'%', Key::new(0x06, 0x2e)),
    (b'6', b'^', Key::new(0x07, 0x36)),
    (b'7', b'&', Key::new(0x08, 0x3d)),
    (b'8', b'*', Key::new(0x09, 0x3e)),
    (b'9', b'(', Key::new(0x0a, 0x46)),
    (b'0', b')', Key::new(0x0b, 0x45)),
    (b'-', b'_', Key::new(0x0c, 0x4e)),
    (b'=', b'+', Key::new(0x0d, 0x55)),
    (b'q', b'Q', Key::new(0x10, 0x15)),
    (b'w', b'W', Key::new(0x11, 0x1d)),
    (b'e', b'E', Key::new(0x12, 0x24)),
    (b'r', b'R', Key::new(0x13, 0x2d)),
    (b't', b'T', Key::new(0x14, 0x2c)),
    (b'y', b'Y', Key::new(0x15, 0x35)),
    (b'u', b'U', Key::new(0x16, 0x3c)),
    (b'i', b'I', Key::new(0x17, 0x43)),
    (b'o', b'O', Key::new(0x18, 0x44)),
    (b'p', b'P', Key::new(0x19, 0x4d)),
    (b'[', b'{', Key::new(0x1a, 0x54)),
    (b']', b'}', Key::new(0x1b, 0x5b)),
    (b'a', b'A', Key::new(0x1e, 0x1c)),
    (b's', b'S', Key::new(0x1f, 0x1b)),
    (b'd', b'D', Key::new(0x20, 0x23)),
    (b'f', b'F', Key::new(0x21, 0x2b)),
    (b'g', b'G', Key::new(0x22, 0x34)),
    (b'h', b'H', Key::new(0x23, 0x33)),
    (b'j', b'J', Key::new(0x24, 0x3b)),
    (b'k', b'K', Key::new(0x25, 0x42)),
    (b'l', b'L', Key::new(0x26, 0x4b)),
    (b';', b':', Key::new(0x27, 0x4c)),
    (b'\'', b'"', Key::new(0x28, 0x52)),
    (b'`', b'~', Key::new(0x29, 0x0e)),
    (b'\\', b'|', Key::new(0x2b, 0x5d)),
    (b'z', b'Z', Key::new(0x2c, 0x1a)),
    (b'x', b'X', Key::new(0x2d, 0x22)),
    (b'c', b'C', Key::new(0x2e, 0x21)),
    (b'v', b'V', Key::new(0x2f, 0x2a)),
    (b'b', b'B', Key::new(0x30, 0x32)),
    (b'n', b'N', Key::new(0x31, 0x31)),
    (b'm', b'M', Key::new(0x32, 0x3a)),
    (b',', b'<', Key::new(0x33, 0x41)),
    (b'.', b'>', Key::new(0x34, 0x49)),
    (b'/', b'?', Key::new(0x35, 0x4a)),
    (b' ', b' ', Key::new(0x39, 0x29)),
];

/// Non-printing keys by X11 keysym (X11/keysymdef.h).
const SPECIAL: &[(u32, Key)] = &[
    (0xff1b, Key::new(0x01, 0x76)), // Escape
    (0xff08, Key::new(0x0e, 0x66)), // BackSpace
    (0xff09, Key::new(0x0f, 0x0d)), // Tab
    (0xfe20, Key::new(0x0f, 0x0d)), // ISO_Left_Tab (Shift+Tab)
    (0xff0d, Key::new(0x1c, 0x5a)), // Return
    (0xffe3, Key::new(0x1d, 0x14)), // Control_L
    (0xffe1, LEFT_SHIFT),           // Shift_L
    (0xffe2, Key::new(0x36, 0x59)), // Shift_R
    (0xffe9, Key::new(0x38, 0x11)), // Alt_L
    (0xffe7, Key::new(0x38, 0x11)), // Meta_L (sent by some viewers for Alt)
    (0xffe5, Key::new(0x3a, 0x58)), // Caps_Lock
    (0xffbe, Key::new(0x3b, 0x05)), // F1
    (0xffbf, Key::new(0x3c, 0x06)), // F2
    (0xffc0, Key::new(0x3d, 0x04)), // F3
    (0xffc1, Key::new(0x3e, 0x0c)), // F4
    (0xffc2, Key::new(0x3f, 0x03)), // F5
    (0xffc3, Key::new(0x40, 0x0b)), // F6
    (0xffc4, Key::new(0x41, 0x83)), // F7
    (0xffc5, Key::new(0x42, 0x0a)), // F8
    (0xffc6, Key::new(0x43, 0x01)), // F9
    (0xffc7, Key::new(0x44, 0x09)), // F10
    (0xffc8, Key::new(0x57, 0x78)), // F11
    (0xffc9, Key::new(0x58, 0x07)), // F12
    (0xff7f, Key::new(0x45, 0x77)), // Num_Lock
    (0xff14, Key::new(0x46, 0x7e)), // Scroll_Lock
    (0xffaa, Key::new(0x37, 0x7c)), // KP_Multiply
    (0xffb7, Key::new(0x47, 0x6c)), // KP_7
    (0xff95, Key::new(0x47, 0x6c)), // KP_Home
    (0xffb8, Key::new(0x48, 0x75)), // KP_8
    (0xff97, Key::new(0x48, 0x75)), // KP_Up
    (0xffb9, Key::new(0x49, 0x7d)), // KP_9
    (0xff9a, Key::new(0x49, 0x7d)), // KP_Prior
    (0xffad, Key::new(0x4a, 0x7b)), // KP_Subtract
    (0xffb4, Key::new(0x4b, 0x6b)), // KP_4
    (0xff96, Key::new(0x4b, 0x6b)), // KP_Left
    (0xffb5, Key::new(0x4c, 0x73)), // KP_5
    (0xff9d, Key::new(0x4c, 0x73)), // KP_Begin
    (0xffb6, Key::new(0x4d, 0x74)), // KP_6
    (0xff98, Key::new(0x4d, 0x74)), // KP_Right
    (0xffab, Key::new(0x4e, 0x79)), // KP_Add
    (0xffb1, Key::new(0x4f, 0x69)), // KP_1
    (0xff9c, Key::new(0x4f, 0x69)), // KP_End
    (0xffb2, Key::new(0x50, 0x72)), // KP_2
    (0xff99, Key::new(0x50, 0x72)), // KP_Down
    (0xffb3, Key::new(0x51, 0x7a)), // KP_3
    (0xff9b, Key::new(0x51, 0x7a)), // KP_Next
    (0xffb0, Key::new(0x52, 0x70)), // KP_0
    (0xff9e, Key::new(0x52, 0x70)), // KP_Insert
    (0xffae, Key::new(0x53, 0x71)), // KP_Decimal
    (0xff9f, Key::new(0x53, 0x71)), // KP_Delete
    (0xff8d, Key::ext(0x1c, 0x5a)), // KP_Enter
    (0xffaf, Key::ext(0x35, 0x4a)), // KP_Divide
    (0xffe4, Key::ext(0x1d, 0x14)), // Control_R
    (0xffea, Key::ext(0x38, 0x11)), // Alt_R
    (0xfe03, Key::ext(0x38, 0x11)), // ISO_Level3_Shift (AltGr)
    (0xffe8, Key::ext(0x38, 0x11)), // Meta_R
    (0xffeb, Key::ext(0x5b, 0x1f)), // Super_L
    (0xffec, Key::ext(0x5c, 0x27)), // Super_R
    (0xff67, Key::ext(0x5d, 0x2f)), // Menu
    (0xff50, Key::ext(0x47, 0x6c)), // Home
    (0xff52, Key::ext(0x48, 0x75)), // Up
    (0xff55, Key::ext(0x49, 0x7d)), // Prior (Page Up)
    (0xff51, Key::ext(0x4b, 0x6b)), // Left
    (0xff53, Key::ext(0x4d, 0x74)), // Right
    (0xff57, Key::ext(0x4f, 0x69)), // End
    (0xff54, Key::ext(0x50, 0x72)), // Down
    (0xff56, Key::ext(0x51, 0x7a)), // Next (Page Down)
    (0xff63, Key::ext(0x52, 0x70)), // Insert
    (0xffff, Key::ext(0x53, 0x71)), // Delete
];

/// The key for an X11 keysym, and whether the character it names needs Shift (for the
/// printable ASCII keysyms; `None` for keys where Shift does not matter).
pub fn key_for_keysym(keysym: u32) -> Option<(Key, Option<bool>)> {
    if let Ok(c) = u8::try_from(keysym) {
        if let Some(&(lower, _, key)) = PRINTABLE
            .iter()
            .find(|(lower, upper, _)| *lower == c || *upper == c)
        {
            let shifted = c != lower;
            return Some((key, (c != b' ').then_some(shifted)));
        }
    }
    SPECIAL
        .iter()
        .find(|(sym, _)| *sym == keysym)
        .map(|&(_, key)| (key, None))
}

/// The set 2 to set 1 translation an i8042 applies when its translate bit is set, for every
/// set 2 code of the keys above; other bytes (acknowledgements, 0xE0) pass unchanged.
pub fn translate_set2(code: u8) -> u8 {
    PRINTABLE
        .iter()
        .map(|(_, _, k)| k)
        .chain(SPECIAL.iter().map(|(_, k)| k))
        .find(|k| k.set2 == code)
        .map_or(code, |k| k.set1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keysyms() {
        let (a, shift) = key_for_keysym(u32::from(b'a')).unwrap();
        assert_eq!((a.set1, a.set2, shift), (0x1e, 0x1c, Some(false)));
        let (big_a, shift) = key_for_keysym(u32::from(b'A')).unwrap();
        assert_eq!((big_a, shift), (a, Some(true)));
        let (bang, shift) = key_for_keysym(u32::from(b'!')).unwrap();
        assert_eq!((bang.set1, shift), (0x02, Some(true)));
        let (enter, _) = key_for_keysym(0xff0d).unwrap();
        assert_eq!(enter.set2_bytes(true), vec![0x5a]);
        assert_eq!(enter.set2_bytes(false), vec![0xf0, 0x5a]);
        let (up, _) = key_for_keysym(0xff52).unwrap();
        assert_eq!(up.set2_bytes(false), vec![0xe0, 0xf0, 0x75]);
        assert!(key_for_keysym(0x20ac).is_none()); // EuroSign: not on a US keyboard
    }

    #[test]
    fn translation_is_consistent() {
        // Keys sharing a set 2 code (aliases) share a set 1 code too, so translation is
        // well defined; the keyboard ID byte 0x83 (F7) becomes 0x41 as on real hardware.
        for (_, _, k) in PRINTABLE {
            assert_eq!(translate_set2(k.set2), k.set1, "{k:?}");
        }
        for (_, k) in SPECIAL {
            assert_eq!(translate_set2(k.set2), k.set1, "{k:?}");
        }
        assert_eq!(translate_set2(0x83), 0x41);
        for b in [0xfa, 0xaa, 0xab, 0xe0, 0xee, 0xfe] {
            assert_eq!(translate_set2(b), b);
        }
    }
}
