//! glibc malloc settings for a small idle footprint: one arena for all
//! threads, large buffers served by mmap (returned at once when freed, with
//! the threshold fixed rather than growing), and the heap top trimmed early.
#![allow(unsafe_code)]

const M_TRIM_THRESHOLD: i32 = -1;
const M_MMAP_THRESHOLD: i32 = -3;
const M_ARENA_MAX: i32 = -8;

extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
}

/// Call once at start-up, before other threads exist.
pub fn tune() {
    for (param, value) in [
        (M_ARENA_MAX, 1),
        (M_MMAP_THRESHOLD, 64 * 1024),
        (M_TRIM_THRESHOLD, 128 * 1024),
    ] {
        // SAFETY: mallopt only adjusts allocator parameters; it takes plain
        // integers, and these are documented parameters with valid values.
        // It runs before any other thread is started.
        unsafe {
            mallopt(param, value);
        }
    }
}
