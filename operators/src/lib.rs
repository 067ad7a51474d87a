//! Reusable timely dataflow operators for sessionization.
//!
//! - [`event`]: the input event model and its validation (pure); `fast_event` is its
//!   single-pass fast path for lines in the common shape.
//! - [`source`]: partitioned input with per-partition watermarks and window assignment.
//! - [`session`]: session state, the keyed store and the `sessionize` operator.
//! - [`sink`]: output operators.
//! - [`local_exchange`]: an exchange pact that passes the records staying on their worker on
//!   whole.
//!
//! Every operator is an extension trait named after its method, e.g. `stream.sessionize(cfg)`.

mod caps;
pub mod event;
mod fast_event;
pub mod json;
pub mod local_exchange;
mod prefetch;
pub mod record;
mod scratch;
pub mod session;
pub mod sink;
pub mod source;
