//! Reusable timely dataflow operators for sessionization.
//!
//! - [`event`]: the input event model and its validation (pure).
//! - [`source`]: partitioned input with per-partition watermarks and window assignment.
//! - [`session`]: session state, the keyed store and the `sessionize` operator.
//! - [`sink`]: output operators.
//!
//! Every operator is an extension trait named after its method, e.g. `stream.sessionize(cfg)`.

pub mod event;
pub mod json;
pub mod record;
pub mod session;
pub mod sink;
pub mod source;
