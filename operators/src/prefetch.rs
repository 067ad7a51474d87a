//! Software prefetch: asks the processor to start loading memory that a hot loop will read a
//! few steps later, so that the cache misses of several steps overlap instead of each stalling
//! in turn.
//!
//! Applying a window is a walk over cold memory: the window's records were parsed up to a
//! window earlier, and each touched session (its struct, event list, arena and attribute sets)
//! was last read a window or more ago. The walk knows its next keys in advance (the window's
//! order is sorted before it starts), so it prefetches what they will need; see
//! `SessionStore::process_some`.
//!
//! One of the workspace's two `unsafe` places (the other is the Kafka source's batch read,
//! `source::batch_queue`): `_mm_prefetch` is a hint that never faults and has no effect a
//! program can observe except timing, so any address is fine; the functions here take
//! references, so the addresses are valid anyway.

/// Bytes per cache line (x86-64 and most 64-bit processors).
const LINE: usize = 64;

/// Prefetches up to `max_bytes` of the memory of `value` (its first lines), into all cache
/// levels.
#[inline(always)]
pub(crate) fn prefetch<T: ?Sized>(value: &T, max_bytes: usize) {
    let len = std::mem::size_of_val(value).min(max_bytes);
    prefetch_lines((value as *const T).cast::<u8>(), len);
}

/// Prefetches `len` bytes from `at`, one request per cache line.
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch_lines(at: *const u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut offset = 0;
        while offset < len {
            // SAFETY: a prefetch is a hint: it does not fault on any address and changes no
            // state a program can observe. SSE, which the intrinsic needs, is part of every
            // x86-64 target (checked by the `cfg` above).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(offset).cast::<i8>()) };
            offset += LINE;
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = (at, len);
}
