//! Timely execution settings from our own flags (timely's getopts parser clashes with clap).

use std::path::PathBuf;

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
