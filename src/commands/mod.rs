//! The `sessionflow` subcommands.

pub mod demo;
pub mod generate_kafka;
pub mod hbase_args;
pub mod offsets;
pub mod query;
pub mod replay;
pub mod run;
