//! Progress lines for the log: at most one every [`INTERVAL`], plus one per 10% of a known size.

use std::time::{Duration, Instant};

/// The longest silence between progress lines while bytes arrive.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Tracks one transfer and says when a line is due.
pub struct Progress {
    start: Instant,
    last: Instant,
    /// Bytes already in the part file when this transfer began (not counted in the rate).
    resumed_from: u64,
    done: u64,
    total: Option<u64>,
    last_decile: u64,
    logged: u64,
}

impl Progress {
    /// A transfer continuing at `offset` of `total` bytes.
    pub fn new(offset: u64, total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            start: now,
            last: now,
            resumed_from: offset,
            done: offset,
            total,
            last_decile: decile(offset, total),
            logged: offset,
        }
    }

    /// Records `n` more bytes; returns the line to log if one is due.
    pub fn add(&mut self, n: u64) -> Option<String> {
        self.done += n;
        let d = decile(self.done, self.total);
        let now = Instant::now();
        if d == self.last_decile && now.duration_since(self.last) < INTERVAL {
            return None;
        }
        self.last_decile = d;
        self.last = now;
        self.logged = self.done;
        Some(self.line())
    }

    /// The closing line, unless the last one logged already said it all.
    pub fn finish(&self) -> Option<String> {
        (self.logged != self.done).then(|| self.line())
    }

    /// The current state: bytes, total and percentage when known, and the average rate.
    pub fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = (self.done - self.resumed_from) as f64 / secs;
        match self.total {
            Some(t) if t > 0 => format!(
                "downloaded {} of {} ({}%) at {}/s",
                size(self.done),
                size(t),
                self.done * 100 / t,
                size(rate as u64)
            ),
            _ => format!("downloaded {} at {}/s", size(self.done), size(rate as u64)),
        }
    }
}

fn decile(done: u64, total: Option<u64>) -> u64 {
    match total {
        Some(t) if t > 0 => done.min(t) * 10 / t,
        _ => 0,
    }
}

/// `n` bytes in binary units with one decimal.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_at_each_tenth() {
        let mut p = Progress::new(0, Some(1000));
        assert!(p.add(50).is_none());
        let l = p.add(60).unwrap();
        assert!(l.starts_with("downloaded 110 B of 1000 B (11%) at "), "{l}");
        assert_eq!((0..8).filter_map(|_| p.add(100)).count(), 8);
        assert_eq!(size(3 << 29), "1.5 GiB");
    }
}
