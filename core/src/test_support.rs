//! Helpers shared by the unit tests.

use std::sync::{Mutex, MutexGuard};

static RNG: Mutex<()> = Mutex::new(());

/// Serialises the tests that draw random numbers. Burn's flex backend keeps one random number
/// generator per process, so a test that seeds it and one that draws from it concurrently would
/// change each other's numbers.
pub fn lock_rng() -> MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
