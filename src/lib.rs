//! sessionflow: real-time sessionization of click streams on timely dataflow.
//!
//! The reusable operators live in the `sessionflow-operators` crate; this crate wires them
//! into jobs ([`pipeline`]) and commands ([`commands`]).

pub mod cluster;
pub mod commands;
pub mod config;
pub mod pipeline;
pub mod stats;
pub mod generate;
