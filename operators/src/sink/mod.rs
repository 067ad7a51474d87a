//! Output operators: files (replay and `--output`), the experiment totals, and the external
//! systems.

pub mod experiments;
pub mod files;
pub mod hbase;
pub mod kafka;
