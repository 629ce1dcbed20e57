//! Helpers shared by several integration tests (`mod common;` in each): a deterministic PRNG.
//! Not a test target of its own (a folder under `tests/`).
#![allow(dead_code)]

/// A small deterministic PRNG (xorshift64*): tests, and the child processes they start, agree
/// on their data, and a failure reproduces from its seed. The seed must not be 0.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `0..n`, for lengths, counts and indexes.
    pub fn below_usize(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}
