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
    /// Writes a synthetic click stream, one file per partition.
    Generate(sessionflow::generate::GenerateArgs),
    /// Runs the whole pipeline in this process on generated events, no servers needed.
    Demo(commands::demo::DemoArgs),
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
        Command::Generate(args) => sessionflow::generate::run(args),
        Command::Demo(args) => commands::demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessionflow: error: {e}");
            ExitCode::FAILURE
        }
    }
}
