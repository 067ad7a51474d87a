//! Sessionization: pure session state ([`state`]), the per-worker keyed store ([`store`]),
//! which worker owns a key ([`routing`]) and the timely operator ([`operator`]); downstream of
//! it, the sessions as a differential-dataflow collection ([`collection`]) and the live totals
//! per experiment variation computed from it ([`experiments`]).

pub mod collection;
pub mod experiments;
pub mod operator;
pub mod routing;
pub mod state;
pub mod store;

pub use collection::{SessionCollection, SessionKey};
pub use experiments::{ExperimentTotals, Variation, VariationTotals};
pub use operator::{Sessionize, Sessionized};
pub use routing::Routing;
pub use state::{Session, SessionConfig, Snapshot};
pub use store::{SessionCounters, SessionOutput, SessionStore};
