//! Output operators: files (replay and `--output`), and the external systems.

pub mod files;
pub mod hbase;
pub mod kafka;
