//! Sessionization: pure session state ([`state`]), the per-worker keyed store ([`store`]),
//! which worker owns a key ([`routing`]) and the timely operator ([`operator`]).

pub mod operator;
pub mod routing;
pub mod state;
pub mod store;

pub use operator::{Sessionize, Sessionized};
pub use routing::Routing;
pub use state::{Session, SessionConfig, Snapshot};
pub use store::{SessionCounters, SessionOutput, SessionStore};
