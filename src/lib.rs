//! sessionflow: real-time sessionization of click streams on timely dataflow.
//!
//! The reusable operators live in the `sessionflow-operators` crate; this crate wires them
//! into jobs ([`pipeline`]) and commands ([`commands`]).

/// The allocator: the engine allocates and frees many small strings per event; mimalloc is
/// markedly faster than glibc's malloc at that and fragments less (see the README figures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cluster;
pub mod commands;
pub mod config;
pub mod generate;
pub mod metrics;
pub mod pipeline;
pub mod sessiondb;
pub mod stats;
