//! The CMOS real-time clock at ports 0x70/0x71: the host's UTC time in BCD, so a guest
//! without network time still starts with the right date. The rest is 128 bytes of NVRAM.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Index port; the data port follows it.
pub const CMOS_BASE: u64 = 0x70;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register B: 24-hour mode, BCD values.
const REG_B_24H: u8 = 0x02;
/// Register D: the battery is good (valid RAM and time).
const REG_D_VRT: u8 = 0x80;
/// Register A: 32.768 kHz time base, 1024 Hz rate; update-in-progress never set.
const REG_A_DEFAULT: u8 = 0x26;

/// The RTC and NVRAM.
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    now: fn() -> u64,
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos {
            index: 0,
            nvram: [0; 128],
            now: || {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            },
        }
    }
}

fn bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm): (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl Cmos {
    fn register(&self, index: u8) -> u8 {
        let t = (self.now)();
        let days = (t / 86_400) as i64;
        let secs = (t % 86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        match index {
            REG_SECONDS => bcd(secs % 60),
            REG_MINUTES => bcd(secs / 60 % 60),
            REG_HOURS => bcd(secs / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            REG_WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u32),
            REG_DAY => bcd(d),
            REG_MONTH => bcd(m),
            REG_YEAR => bcd((y % 100) as u32),
            REG_CENTURY => bcd((y / 100) as u32),
            REG_A => REG_A_DEFAULT,
            REG_B => REG_B_24H,
            REG_C => 0,
            REG_D => REG_D_VRT,
            i => self.nvram[usize::from(i & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = match offset {
            1 => self.register(self.index),
            _ => 0xff,
        };
        data.fill(v);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            // Bit 7 of the index port masks NMIs; it is not part of the index.
            0 => self.index = v & 0x7f,
            1 if !matches!(self.index, REG_SECONDS..=REG_D | REG_CENTURY) => {
                self.nvram[usize::from(self.index)] = v
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(CMOS_BASE, 0, &[reg | 0x80]);
        let mut b = [0];
        c.read(CMOS_BASE, 1, &mut b);
        b[0]
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn reports_time_in_bcd() {
        // 2026-11-28 13:45:56 UTC, a Saturday.
        let mut c = Cmos {
            now: || 20_785 * 86_400 + 13 * 3600 + 45 * 60 + 56,
            ..Default::default()
        };
        let regs = [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_DAY,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
            REG_WEEKDAY,
        ];
        let got = regs.map(|r| read(&mut c, r));
        assert_eq!(got, [0x56, 0x45, 0x13, 0x28, 0x11, 0x26, 0x20, 0x07]);
        assert_eq!(read(&mut c, REG_A) & 0x80, 0, "never update-in-progress");
        assert_eq!(read(&mut c, REG_D), REG_D_VRT);
    }

    #[test]
    fn nvram_keeps_writes_but_clock_is_read_only() {
        let mut c = Cmos::default();
        c.write(CMOS_BASE, 0, &[0x40]);
        c.write(CMOS_BASE, 1, &[0x5a]);
        assert_eq!(read(&mut c, 0x40), 0x5a);
        c.write(CMOS_BASE, 0, &[REG_B]);
        c.write(CMOS_BASE, 1, &[0x00]);
        assert_eq!(read(&mut c, REG_B), REG_B_24H);
    }
}
