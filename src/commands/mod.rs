//! The `sessionflow` subcommands.

pub mod replay;
