//! The `sessionflow` subcommands.

pub mod demo;
pub mod replay;
