//! A small stable hash for cache keys, dataset fingerprints and checkpoint checksums.

use std::hash::Hasher;

/// The 64-bit FNV-1a hash: stable across Rust versions and platforms, unlike `DefaultHasher`.
/// It detects accidental changes (damaged files, edited photos), not deliberate ones.
#[derive(Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= *byte as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Returns the FNV-1a hash of `bytes` as 16 hexadecimal digits.
pub fn fnv64_hex(bytes: &[u8]) -> String {
    let mut hasher = Fnv64::default();
    hasher.write(bytes);
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fnv_values() {
        // Reference values of the 64-bit FNV-1a hash.
        assert_eq!(fnv64_hex(b""), "cbf29ce484222325");
        assert_eq!(fnv64_hex(b"a"), "af63dc4c8601ec8c");
    }
}
