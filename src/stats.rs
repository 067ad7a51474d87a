//! The run's counters (the spec's "Counters" section), summed over every worker and process.

use serde::{Deserialize, Serialize};
use sessionflow_operators::session::SessionCounters;
use sessionflow_operators::source::SourceGauges;

/// Counters every run reports. `events_read = accepted + duplicates + late + invalid` holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Lines or messages read (empty replay lines are not counted).
    pub events_read: u64,
    /// Events accepted into a session.
    pub accepted: u64,
    /// Events dropped as duplicates.
    pub duplicates: u64,
    /// Events dead-lettered as `session_closed`.
    pub late: u64,
    /// Invalid lines or messages (dead-lettered).
    pub invalid: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions closed (merged-away gap sessions included).
    pub sessions_closed: u64,
    /// Snapshots emitted.
    pub snapshots: u64,
}

impl Stats {
    /// One worker's counters from its source and sessionize gauges.
    pub fn from_parts(source: &SourceGauges, session: &SessionCounters) -> Stats {
        Stats {
            events_read: source.events_read,
            accepted: session.accepted,
            duplicates: session.duplicates,
            late: session.late,
            invalid: source.invalid,
            sessions_opened: session.sessions_opened,
            sessions_closed: session.sessions_closed,
            snapshots: session.snapshots,
        }
    }

    /// Adds another worker's counters.
    pub fn add(&mut self, o: &Stats) {
        self.events_read += o.events_read;
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.late += o.late;
        self.invalid += o.invalid;
        self.sessions_opened += o.sessions_opened;
        self.sessions_closed += o.sessions_closed;
        self.snapshots += o.snapshots;
    }

    /// Whether `events_read = accepted + duplicates + late + invalid`.
    pub fn balanced(&self) -> bool {
        self.events_read == self.accepted + self.duplicates + self.late + self.invalid
    }
}
