//! Thread-local scratch buffers for hot paths: kept from call to call instead of allocated for
//! each (parsing an event's maps, writing an accepted event's JSON).

use std::cell::RefCell;
use std::thread::LocalKey;

/// Runs `f` with the scratch value in `key` (buffers keep their capacity between calls; `f`
/// clears what it uses). A nested call on the same key, which the callers never make, gets a
/// fresh value instead of a borrow panic.
pub(crate) fn with_scratch<T: Default + 'static, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut value) => f(&mut value),
        Err(_) => f(&mut T::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn the_buffer_is_kept_and_a_nested_call_gets_a_fresh_one() {
        let cap = with_scratch(&BUF, |b| {
            b.extend_from_slice(&[1; 100]);
            // Nested: a fresh, empty buffer, not a panic.
            let inner = with_scratch(&BUF, |n| n.len());
            assert_eq!(inner, 0);
            b.capacity()
        });
        with_scratch(&BUF, |b| {
            assert_eq!(b.len(), 100, "kept between calls");
            assert_eq!(b.capacity(), cap);
        });
    }
}
