//! Allocator settings for training on the CPU.
//!
//! A training step on the CPU backend allocates and frees activations of tens to hundreds of
//! MiB many times. glibc serves blocks above its mmap threshold (128 KiB to 32 MiB) with fresh
//! `mmap` calls and gives freed heap memory back with `munmap` and trimming, so every step paid
//! for page faults, page zeroing and TLB shootdowns. Measured on a 2-core machine, about a third
//! of a Conv4 training step was kernel time, and the step ran at 0.44 instead of 0.80 episodes/s.
//! Keeping freed memory in the process removes that cost at the price of a higher resident
//! size (926 instead of 795 MiB peak in the same measurement).

/// Makes glibc's malloc serve every block from its heap and never return freed memory to the
/// kernel. Other C libraries are left as they are.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    use std::ffi::c_int;

    // Parameter numbers from glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_MAX: c_int = -4;
    unsafe extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // SAFETY: mallopt only changes allocator parameters, and it runs at start-up before the
    // program allocates from other threads.
    unsafe {
        mallopt(M_MMAP_MAX, 0);
        mallopt(M_TRIM_THRESHOLD, c_int::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
