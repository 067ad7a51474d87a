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
    /// Writes a synthetic click stream, one file per partition, or produces it to Kafka.
    Generate(commands::generate_kafka::GenerateCommand),
    /// The live job on a Kafka topic (with --stop-at-end, a bounded run like replay).
    Run(Box<commands::run::RunArgs>),
    /// Runs the whole pipeline in this process on generated events, no servers needed.
    Demo(commands::demo::DemoArgs),
    /// Queries SessionDB in HBase: project metrics, or one session by id.
    Query(commands::query::QueryArgs),
    /// Where a `run` consumer group stands: committed offsets, lag, and the window it resumes at.
    Offsets(commands::offsets::OffsetsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sessionflow::cluster::exit_on_lost_peer();
    let result = match cli.command {
        Command::Replay(args) => commands::replay::run(args).map(|stats| {
            if let Some(s) = stats {
                eprintln!(
                    "replay: {} events read, {} accepted, {} duplicates, {} late, {} invalid; {} sessions, {} snapshots",
                    s.events_read, s.accepted, s.duplicates, s.late, s.invalid, s.sessions_opened, s.snapshots
                );
            }
        }),
        Command::Generate(args) => commands::generate_kafka::run(args),
        Command::Run(args) => commands::run::run(*args).map(|stats| {
            if let Some(r) = stats {
                let s = r.stats;
                eprintln!(
                    "run: {} events read, {} accepted, {} duplicates, {} late, {} invalid; {} sessions, {} snapshots; {} skipped on resume",
                    s.events_read, s.accepted, s.duplicates, s.late, s.invalid, s.sessions_opened, s.snapshots, r.skipped_on_resume
                );
            }
        }),
        Command::Demo(args) => commands::demo::run(args),
        Command::Query(args) => commands::query::run(args),
        Command::Offsets(args) => commands::offsets::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessionflow: error: {e}");
            ExitCode::FAILURE
        }
    }
}
