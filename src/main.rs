//! The `sessionflow` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sessionflow::commands;

/// Real-time sessionization of click streams on timely dataflow.
#[derive(Parser, Debug)]
#[command(name = "sessionflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Deterministic reference run over files, one per partition.
    Replay(commands::replay::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => commands::replay::run(args).map(|stats| {
            if let Some(s) = stats {
                eprintln!(
                    "replay: {} events read, {} accepted, {} duplicates, {} late, {} invalid; {} sessions, {} snapshots",
                    s.events_read, s.accepted, s.duplicates, s.late, s.invalid, s.sessions_opened, s.snapshots
                );
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessionflow: error: {e}");
            ExitCode::FAILURE
        }
    }
}
