//! The capabilities of an operator with two outputs (the partitioned source, `sessionize`):
//! one per output, always at the same time, created, moved and downgraded together.

use timely::dataflow::operators::Capability;

/// One capability per output: `[0]` for the main records (events, snapshots), `[1]` for the
/// dead letters.
pub(crate) type Caps = [Capability<u64>; 2];

/// Downgrades both capabilities to `t`.
pub(crate) fn downgrade(caps: &mut Caps, t: &u64) {
    for c in caps {
        c.downgrade(t);
    }
}
