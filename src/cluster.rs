//! Timely execution settings from our own flags (timely's getopts parser clashes with clap).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;

/// Where the workers run: threads in this process, and optionally a timely cluster.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Worker threads in this process (count).
    #[arg(long, short = 'w', default_value_t = 1)]
    pub workers: usize,
    /// Processes in the timely cluster (count); each runs `--workers` threads.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// This process's index in the cluster (0-based); process 0 writes the output files.
    #[arg(long, default_value_t = 0)]
    pub process_id: usize,
    /// File with one `host:port` per line, one line per process (required with --processes > 1).
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    /// Builds the timely configuration.
    pub fn timely_config(&self) -> Result<timely::Config, String> {
        if self.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        let communication = if self.processes > 1 {
            if self.process_id >= self.processes {
                return Err(format!(
                    "--process-id {} must be below --processes {}",
                    self.process_id, self.processes
                ));
            }
            let path = self
                .hostfile
                .as_ref()
                .ok_or("--hostfile is required with --processes > 1")?;
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read hostfile {}: {e}", path.display()))?;
            let addresses: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            if addresses.len() != self.processes {
                return Err(format!(
                    "hostfile {} lists {} addresses but --processes is {}",
                    path.display(),
                    addresses.len(),
                    self.processes
                ));
            }
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process_id,
                addresses,
                report: false,
                zerocopy: false,
            }
        } else if self.workers > 1 {
            timely::CommunicationConfig::Process(self.workers)
        } else {
            timely::CommunicationConfig::Thread
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }

    /// Whether this process writes the output files (process 0).
    pub fn writes_outputs(&self) -> bool {
        self.process_id == 0
    }
}

/// Exit status of a process whose cluster connection broke.
pub const LOST_PEER_EXIT: i32 = 1;

/// Turns the loss of another process of the cluster into one clear line and exit status
/// [`LOST_PEER_EXIT`], instead of timely's cascade of panics (its network thread panics on
/// the broken connection, then every thread that shares its queues) and status 101.
///
/// Such a process cannot go on: its workers wait for progress from the lost one. What it
/// wrote is safe: a `run` resumes from its committed offsets when the cluster is restarted,
/// and writes again what was not committed. Any other panic is reported as before.
pub fn exit_on_lost_peer() {
    static LOST: AtomicBool = AtomicBool::new(false);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("timely communication error") {
            if !LOST.swap(true, Ordering::SeqCst) {
                eprintln!(
                    "sessionflow: error: the connection to another process of the cluster broke \
                     ({message}); this process stops too: restart every process of the cluster \
                     (a run resumes from its committed offsets)"
                );
            }
            std::process::exit(LOST_PEER_EXIT);
        }
        default(info);
    }));
}
